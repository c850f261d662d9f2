"""One config loader for every entry point: train, evaluate, push and the app (training/configuration.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from training import evaluate as evaluate_cli
from training import push as push_cli
from training import train as train_cli
from training.config import SourceConfig
from training.configuration import CommandLine, ConfigError, load_config, read_command


@dataclass
class Section:
    rate: float = 0.1
    where: dict[str, str] = field(default_factory=dict)


@dataclass
class Example:
    name: str
    revision: str | None = None
    count: int = 1
    verbose: bool = False
    section: Section = field(default_factory=Section)


EXAMPLE = CommandLine(
    prog="example", aliases={"rate": "section.rate", "where": "section.where"}, environment={"count": "EX_COUNT"}
)


def example(argv: list[str], environ: dict[str, str] | None = None) -> Example:
    command = read_command(Example, argv, EXAMPLE, environ or {})
    assert command is not None
    return command.config


def test_both_spellings_of_values_bare_switches_and_aliases():
    config = example(["--name", "x", "--count=3", "--verbose", "--rate", "0.5", "--where", "split=test"])
    assert config == Example("x", None, 3, True, Section(0.5, {"split": "test"}))
    assert example(["--name=x", "--section.rate=1e-4", "--section.where={year: 2014}"]).section.where == {
        "year": "2014"
    }


def test_text_keys_take_the_text_as_written():
    """YAML would read 0123 as an octal number and 1.10 as 1.1: a revision or a path must stay as typed."""
    assert example(["--name=1.10", "--revision", "0123"]) == Example("1.10", "0123")
    assert example(["--name=x", "--revision=null"]).revision is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--name=x", "--cuont=2"], r"unknown config keys \['cuont'\]"),
        (["--name=x", "--section.rat=2"], r"unknown config keys \['section.rat'\]"),
        (["--name=x", "--count=two"], "count: expected int, got 'two'"),
        (["--name=x", "--verbose=maybe"], "expected true or false"),
        (["--count=2"], r"missing required config keys \['name'\]"),
        (["--name"], "--name needs a value"),
        (["--name=x", "stray"], "unexpected argument 'stray'"),
        (["--name=x", "--where", "split"], "--where takes NAME=VALUE items"),
    ],
)
def test_refused_command_lines(argv, message):
    with pytest.raises(ConfigError, match=message):
        example(argv)


def test_environment_fills_defaults_and_the_file_and_command_line_override_it(tmp_path):
    assert example(["--name=x"], {"EX_COUNT": "5"}).count == 5
    assert example(["--name=x"], {"EX_COUNT": " "}).count == 1  # blank: unset
    path = tmp_path / "example.yaml"
    path.write_text("name: from-file\ncount: 7\n")
    assert example(["--config", str(path)], {"EX_COUNT": "5"}) == Example("from-file", count=7)
    assert example([f"--config={path}", "--count=9"], {"EX_COUNT": "5"}).count == 9
    with pytest.raises(ConfigError, match=r"count \(from EX_COUNT\): expected int, got 'many'"):
        example(["--name=x"], {"EX_COUNT": "many"})


def test_load_config_keeps_the_training_syntax_and_takes_the_spaced_one():
    assert load_config(SourceConfig, None, ["--path=a", "--split", "test", "--streaming"]) == SourceConfig(
        path="a", split="test", streaming=True
    )
    with pytest.raises(ConfigError, match="--key=value"):
        load_config(SourceConfig, None, ["path=a"])


# ------------------------------------------------------------------ the entry points


def run(main, argv: list[str], capsys, **kwargs) -> tuple[int, str, str]:
    status = main(argv, **kwargs)
    out, err = capsys.readouterr()
    return status, out, err


def only_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def app_main(argv: list[str], environ: dict[str, str] | None = None) -> int:
    import app as app_module

    return app_module.main(argv, environ=environ or {})


ENTRY_POINTS = {
    "train": (train_cli.main, [], "--stage1.optim.lr=1e-3", ("stage1", "optim", "lr"), 1e-3),
    "evaluate": (evaluate_cli.main, ["--model", "m", "--data", "d"], "--batch-size=32", ("batch_size",), 32),
    "push": (push_cli.main, ["--model", "m", "--repo", "u/n"], "--branch=dev", ("branch",), "dev"),
    "app": (app_main, [], "--votes-per-minute=7", ("votes_per_minute",), 7),
}


WRONG_TYPES = {"train": "--seed=x", "evaluate": "--batch-size=many", "push": "--private=sometimes", "app": "--port=x"}


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_refuses_unknown_keys_and_wrong_types_in_one_line(name, capsys):
    main, base, *_ = ENTRY_POINTS[name]
    status, out, err = run(main, [*base, "--no-such-key=1"], capsys)
    assert status == 2 and out == ""
    assert "unknown config keys ['no_such_key']" in only_error(err)
    status, _, err = run(main, [*base, WRONG_TYPES[name]], capsys)
    assert status == 2 and ("expected int" in only_error(err) or "expected true or false" in err)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_prints_the_resolved_config_with_an_override(name, capsys):
    main, base, override, keys, expected = ENTRY_POINTS[name]
    status, out, _ = run(main, [*base, override, "--print-config"], capsys)
    assert status == 0
    value = json.loads(out)
    for key in keys:
        value = value[key]
    assert value == pytest.approx(expected) if isinstance(expected, float) else value == expected
    status, out, _ = run(main, ["--help"], capsys)
    assert status == 0 and out.startswith("usage: ")


def test_evaluate_keeps_its_flags(capsys):
    argv = ["--model", "m", "--data", "d.json", "--image-root", "imgs", "--split", "val", "--where", "split=val",
            "--limit", "9", "--text-column", "sentences", "--captions-per-image", "4", "--update-card",
            "--print-config"]  # fmt: skip
    status, out, _ = run(evaluate_cli.main, argv, capsys)
    config = json.loads(out)
    assert status == 0 and config["update_card"] and config["captions_per_image"] == 4
    assert config["data"] == {**config["data"], "path": "d.json", "image_root": "imgs", "split": "val",
                              "where": {"split": "val"}, "limit": 9, "text_column": "sentences"}  # fmt: skip
    status, _, err = run(
        evaluate_cli.main, ["--model", "m", "--data", "d", "--protocol", "5k", "--update-card"], capsys
    )
    assert status == 2 and "--update-card records the full-set metrics" in only_error(err)
    status, _, err = run(evaluate_cli.main, ["--model", "m"], capsys)
    assert status == 2 and "no caption source" in only_error(err)


def test_push_masks_the_token_in_the_printed_config(capsys):
    argv = ["--model", "m", "--repo", "u/n", "--private", "--token", "hf_secret", "--print-config"]
    status, out, _ = run(push_cli.main, argv, capsys)
    assert status == 0 and "hf_secret" not in out
    assert json.loads(out)["private"] is True and json.loads(out)["token"] == "***"


def test_app_reads_the_space_variables_below_the_command_line(capsys):
    environ = {"VSE_MODEL": "user/model", "VSE_GALLERY": "user/gallery", "VSE_OAUTH": "1", "VSE_FEEDBACK_REPO": "",
               "VSE_REVIEWS_PER_IMAGE": "3", "VSE_REVIEW_LEASE_SECONDS": "90", "GRADIO_SERVER_NAME": "0.0.0.0",
               "GRADIO_SERVER_PORT": "8000"}  # fmt: skip
    status, out, _ = run(app_main, ["--gallery", "USER/DATASET", "--print-config"], capsys, environ=environ)
    config = json.loads(out)
    assert status == 0
    assert config["model"] == "user/model" and config["gallery"] == "USER/DATASET"  # the command line wins
    assert config["oauth"] is True and config["backup"] is None and config["reviews_per_image"] == 3
    assert config["review_lease_seconds"] == 90
    assert (config["host"], config["port"]) == ("0.0.0.0", 8000)
    status, _, err = run(app_main, ["--print-config"], capsys, environ={"VSE_OAUTH": "perhaps"})
    assert status == 2 and "VSE_OAUTH='perhaps'" in only_error(err)
    status, _, err = run(app_main, ["--review-lease-seconds=-1", "--print-config"], capsys)
    assert status == 2 and "review_lease_seconds must not be negative" in only_error(err)
