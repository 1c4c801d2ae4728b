"""Seed lists: the ranges StyleGAN/EDM users type, and one-line errors for everything else."""

import click
import pytest
from click.testing import CliRunner

from gan_refine.seeds import MAX_SEED, SeedList, format_seeds, parse_seeds


@pytest.mark.parametrize("text, expected", [
    ("0", [0]),
    ("0-4", [0, 1, 2, 3, 4]),
    ("0,5,10-12", [0, 5, 10, 11, 12]),
    (" 3 , 1-2 ", [3, 1, 2]),          # order as written
    ("7,7", [7, 7]),                    # repeats kept, as upstream's parsers do
    ("4-4", [4]),
    (f"{MAX_SEED}", [MAX_SEED]),
])
def test_parse_seeds(text, expected):
    assert parse_seeds(text) == expected


def test_standard_range_is_fifty_thousand_seeds():
    seeds = parse_seeds("0-49999")
    assert len(seeds) == 50000 and seeds[0] == 0 and seeds[-1] == 49999


@pytest.mark.parametrize("text, pattern", [
    ("5-2", "runs backwards; write it as 2-5"),
    ("a", "'a' is not a seed or a range"),
    ("1.5", "is not a seed or a range"),
    ("", "empty seed list"),
    ("1,,2", "empty item"),
    ("-1", "negative"),
    ("3--2", "negative"),
    (f"{MAX_SEED + 1}", "too large"),
    (f"0-{MAX_SEED + 1}", "too large"),
    ("0-4294967295", "more than 10,000,000 seeds"),
])
def test_bad_seeds(text, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        parse_seeds(text)
    assert "\n" not in str(info.value)


def test_format_round_trips():
    for seeds in ([0, 1, 2, 5], [3], [9, 8, 7], [0, 2, 3, 4, 10, 11]):
        assert parse_seeds(format_seeds(seeds)) == seeds
    assert format_seeds([0, 1, 2, 5]) == "0-2,5"


@click.command()
@click.option("--seeds", type=SeedList(), default="0-2")
def _echo(seeds):
    click.echo(repr(seeds))


def test_click_type():
    runner = CliRunner()
    assert runner.invoke(_echo, []).output.strip() == "[0, 1, 2]"
    assert runner.invoke(_echo, ["--seeds", "4,6-7"]).output.strip() == "[4, 6, 7]"
    r = runner.invoke(_echo, ["--seeds", "5-2"])
    assert r.exit_code == 2
    assert "Invalid value for '--seeds': range '5-2' runs backwards" in r.output
