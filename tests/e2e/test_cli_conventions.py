"""The command line fits its ecosystem: help with examples, exit codes in the help, shell completion,
NO_COLOR, and log records on the right stream (plain progress lines only where no bar shows them)."""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from bifamily.cli import EXIT_BAD_INPUT, main
from bifamily.console import ConsoleHandler
from bifamily.runlog import PROGRESS, REPORT, ROOT
from bifamily.stopping import EXIT_DIVERGED, Diverged, Interrupted

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "recipes" / "quickstart.toml")
ESCAPE = "\x1b["


def invoke(*args: str, **kwargs):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, **kwargs)


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert f"bifamily {command}" in result.output.split("Example", 1)[-1], result.output


def test_the_main_help_lists_the_exit_codes_the_code_uses():
    text = invoke("--help").output
    exit_codes = text.split("Exit codes:", 1)[1]
    assert (EXIT_BAD_INPUT, EXIT_DIVERGED, Diverged([]).exit_code) == (2, 3, 3)
    for code in ("0", "1", str(EXIT_BAD_INPUT), str(EXIT_DIVERGED), "128+N"):
        assert re.search(rf"^ +{re.escape(code)} {{2,}}\w", exit_codes, re.MULTILINE), code
    for signum in (signal.SIGINT, signal.SIGTERM):
        assert f"{Interrupted(signum, []).exit_code} {signal.Signals(signum).name}" in exit_codes
    assert "--version" in text and "bifamily completion bash" in text


@pytest.mark.parametrize(
    "shell, marker",
    [("bash", "-F _bifamily_completion bifamily"), ("zsh", "compdef _bifamily_completion bifamily"),
     ("fish", "--command bifamily")],
)
def test_completion_prints_a_script_for_each_shell(shell, marker):
    result = invoke("completion", shell)
    assert result.exit_code == 0
    assert "_BIFAMILY_COMPLETE" in result.output and marker in result.output


def test_completion_answers_for_commands_and_choices():
    def complete(words: str, cword: int) -> list[str]:
        env = {"_BIFAMILY_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        return CliRunner().invoke(main, [], env=env, prog_name="bifamily").output.split()

    assert complete("bifamily ex", 1) == ["plain,export"]
    assert complete("bifamily export x --module ", 4) == ["plain,encoder", "plain,generator"]


def test_errors_are_coloured_on_a_terminal_only_without_no_color(monkeypatch):
    bad = ("validate", QUICKSTART, "--set", "prior.dim=0")
    monkeypatch.delenv("NO_COLOR", raising=False)
    on_terminal = invoke(*bad, color=True)
    assert on_terminal.exit_code == 2 and ESCAPE in on_terminal.stderr
    piped = invoke(*bad)  # CliRunner's streams are not terminals
    assert piped.stderr.startswith("error: ") and ESCAPE not in piped.stderr
    monkeypatch.setenv("NO_COLOR", "1")
    no_color = invoke(*bad, color=True)
    assert no_color.exit_code == 2 and no_color.stderr.startswith("error: ") and ESCAPE not in no_color.stderr


def test_no_color_set_but_empty_does_not_disable_colour(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "")  # https://no-color.org: only a non-empty value counts
    assert ESCAPE in invoke("validate", QUICKSTART, "--set", "prior.dim=0", color=True).stderr


def _record(name: str, level: int, text: str) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, level, "", 0, text, (), None)


@pytest.mark.parametrize("bar", [True, False])
def test_console_sends_results_to_stdout_notes_to_stderr_and_progress_only_without_a_bar(bar, capsys, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    handler = ConsoleHandler(bar=bar)
    handler.handle(_record(PROGRESS, logging.INFO, "step 2/4  loss_d 1.0000"))
    handler.handle(_record(REPORT, logging.INFO, "run directory: runs/x"))
    handler.handle(_record(ROOT, logging.INFO, "resumed runs/x at step 2"))
    handler.handle(_record(ROOT, logging.WARNING, "rolled back to step 2"))
    out, err = capsys.readouterr()
    assert out == "run directory: runs/x\n"
    progress = "" if bar else "step 2/4  loss_d 1.0000\n"
    assert err == f"{progress}resumed runs/x at step 2\nwarning: rolled back to step 2\n"
