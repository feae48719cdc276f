"""The README and docs/ stay true to the code: every `medseq` command they show uses a
command and options that `medseq COMMAND --help` offers (or Beam's own options, for the
commands that pass them on), every config key they show in a YAML block is a key of the
config, every link to a file or a heading resolves, and the README stays a page a
newcomer reads (at most 450 lines)."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from helpers import REPO
from medseq.pipeline import cli
from medseq.pipeline.config import PipelineConfig, overlay

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _commands(text: str) -> list[str]:
    """`medseq ...` command lines of fenced blocks (continuations joined) and of inline code."""
    found = []
    for _, block in FENCE.findall(text):
        joined = block.replace("\\\n", " ")
        found += [line.strip() for line in joined.splitlines() if line.strip().startswith("medseq ")]
    prose = FENCE.sub("", text)
    found += [span for span in re.findall(r"`(medseq [^`]+)`", prose)]
    return found


def _subparsers() -> dict[str, cli._Parser]:
    return cli.build_parser().commands


def test_the_readme_is_a_page_a_newcomer_reads():
    assert len((REPO / "README.md").read_text().splitlines()) <= 450


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_shown_is_one_medseq_offers(page):
    commands = _subparsers()
    checked = 0
    for line in _commands(page.read_text()):
        words = shlex.split(line.split(" # ")[0].replace("[", " ").replace("]", " ").replace("|", " "),
                            posix=True)
        if len(words) < 2 or words[1].startswith("-") or words[1].isupper() or words[1][-1] in ":>":
            continue  # `medseq -v ...`, `medseq COMMAND ...`: prose about commands in general
        name = words[1]
        assert name in commands, f"{page.name}: `{line}`: no command {name!r}"
        offered = set(commands[name].flags)
        for word in words[2:]:
            flag = word.split("=", 1)[0]
            if not flag.startswith("--") or flag == "--":
                continue
            beams = name in cli.BEAM_COMMANDS and "=" in word and not cli.unknown_to_beam([word])
            known = flag in offered or beams
            assert known, f"{page.name}: `{line}`: {flag} is not an option of `medseq {name}`"
        checked += 1
    if page.name == "README.md":
        assert checked >= 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_config_shown_loads(page):
    from medseq.pipeline.config import from_dict, load_config, to_dict

    base = to_dict(load_config())
    for lang, block in FENCE.findall(page.read_text()):
        if lang != "yaml":
            continue
        data = yaml.safe_load(block)
        if "input" in data:
            data.setdefault("labels", "labels.csv")
        merged = overlay({k: v for k, v in base.items() if not ("input" in data and k == "synth")}, data)
        from_dict(PipelineConfig, merged)  # an unknown key or a wrong value raises ConfigError


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    text = FENCE.sub("", page.read_text())
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and file.suffix == ".md":
            headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", FENCE.sub("", file.read_text()), re.M)}
            assert anchor in headings, f"{page.name}: link to {target}: no such heading ({sorted(headings)})"
