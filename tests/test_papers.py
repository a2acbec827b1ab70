"""Every method's paper (kit/papers/) is complete, consistent with its config, and shown."""

from __future__ import annotations

import re

import pytest

from kit.cli import main
from kit.method import load_methods, method_modules
from kit.papers import Paper

METHODS = load_methods()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_a_paper_with_a_title(name):
    cls = METHODS[name]
    paper = cls.paper
    assert isinstance(paper, Paper)
    assert paper.method == name
    assert paper.title.strip() and paper.citation.strip()
    for dataset, values in paper.results.items():
        assert dataset and values and all(0 <= v <= 1 for v in values.values()), dataset
    if paper.seed_file is not None:
        assert "/" not in paper.seed_file
        if paper.seed_path.parent.is_dir():  # ../shared/seeds is there on development machines
            assert paper.seed_path.is_file(), paper.seed_path


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_budget_has_a_note_and_every_note_a_budget(name):
    cls = METHODS[name]
    notes = cls.paper.budget_notes
    assert set(notes) == set(cls.config_cls.BUDGETS)
    assert all(note.strip() for note in notes.values())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_ablation_variant_builds_a_valid_config(name):
    cls = METHODS[name]
    names = [a.name for a in cls.paper.ablations]
    assert len(set(names)) == len(names)
    for ablation in cls.paper.ablations:
        assert cls.paper.ablation(ablation.name) is ablation
        labels = [v.label for v in ablation.variants]
        assert labels and len(set(labels)) == len(labels), ablation.name
        for variant in ablation.variants:
            assert variant.paper_value is None or 0 <= variant.paper_value <= 1
            for budget in cls.config_cls.BUDGETS:  # ConfigError on a bad name, type or range
                cls.config_cls.for_budget(budget, **variant.overrides)
    with pytest.raises(ValueError, match="no ablation"):
        cls.paper.ablation("no-such-ablation")


def test_papers_are_not_discovered_as_methods():
    assert not any(".papers" in module for module in method_modules())


def test_info_shows_titles_and_budget_notes(capsys):
    assert main(["info"]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # wrapped lines joined again
    for name, cls in METHODS.items():
        assert cls.paper.title in shown
        for budget, note in cls.paper.budget_notes.items():
            assert f"budget '{budget}': {' '.join(note.split())}" in shown, (name, budget)
        for ablation in cls.paper.ablations:
            assert re.search(rf"ablation '{re.escape(ablation.name)}'", shown)
