"""What each method's paper says, kept apart from the method's code: one ``PAPER`` per method.

``kit/papers/<method>.py`` defines ``PAPER = Paper(...)``: the paper's title and citation, the
numbers it reports (``results``), its ablation tables (``ablations``, run by
``python -m kit ablation`` and drawn by the dashboard's Ablations page) and why each of the
kit's budgets has the values it has (``budget_notes``, printed by ``python -m kit info``).
The method class points at it with ``paper = PAPER`` (``AnomalyMethod.paper``), so the class
stays about the method. This is not ``kit/methods/``: every module there is a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.paths import SHARED_SEEDS

__all__ = ["AblationVariant", "Ablation", "Paper"]


@dataclass
class AblationVariant:
    """One column of a paper's ablation table: the overrides that make it and the paper's value."""

    label: str
    overrides: dict[str, Any]
    paper_value: float | None = None  # in [0, 1]; None where the paper gives no number
    # the named map whose metrics are the variant's value (metrics.json["maps"][map]); None =
    # the run's primary map. Variants with equal overrides share one run (maps of one model).
    map: str | None = None
    # (ablation, variant) of the same paper whose run this variant reads instead of a run of
    # its own, e.g. Table 1's FE_CLS is a map of Table 2's run; None = its own run
    source: tuple[str, str] | None = None

    def value(self, metrics: dict[str, Any], metric: str) -> float | None:
        """This variant's ``metric`` in a run's ``metrics.json``, None where it is missing."""
        source = metrics if self.map is None else (metrics.get("maps") or {}).get(self.map) or {}
        value = source.get(metric)
        return None if value is None else float(value)


@dataclass
class Ablation:
    """A paper's ablation study, run as one run per variant (tagged in the run's config)."""

    name: str
    title: str
    metric: str  # key of metrics.json, e.g. "image_auroc"
    paper_dataset: str  # where the paper's numbers come from, e.g. "MVTec AD mean"
    variants: list[AblationVariant] = field(default_factory=list)
    note: str = ""
    plot: str = "bars"  # "curve" where the paper draws a curve (x = the run's training images)
    # further metrics its tables show after image / pixel AUROC, pixel AUPR and AUPRO, where the
    # paper reports them too (NF-BMR's Tables 2 and 4: precision, recall and F1 at a threshold)
    extra_metrics: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """The metrics a table of this ablation shows: its own first, then the others."""
        from kit.report import METRICS

        return (self.metric, *[m for m in (*METRICS, *self.extra_metrics) if m != self.metric])


@dataclass(frozen=True)
class Paper:
    """One method's paper: what it reports and how the kit's budgets relate to it."""

    method: str  # registry name of the method implementing it, e.g. "differnet"
    title: str  # short human name, e.g. "DifferNet (Rudolph et al., WACV 2021)"
    citation: str = ""  # authors, title, venue, year
    seed_file: str | None = None  # the paper's text in ../shared/seeds (SHARED_SEEDS), if there
    # the paper's numbers per dataset, in [0, 1]: {"mtd": {"image_auroc": 0.977}}
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    ablations: tuple[Ablation, ...] = ()
    # the paper's tables in full, every metric: {table: {row: {metric: value}}}; an ablation's
    # variants carry only its headline metric, notebooks print the rest beside ours from here
    tables: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    budget_notes: dict[str, str] = field(default_factory=dict)  # budget -> why it has its values

    @property
    def seed_path(self) -> Path | None:
        """Where the paper's text would be (it may be absent on this machine)."""
        return SHARED_SEEDS / self.seed_file if self.seed_file else None

    def ablation(self, name: str) -> Ablation:
        """The ablation called ``name``; ValueError listing the known ones otherwise."""
        for ablation in self.ablations:
            if ablation.name == name:
                return ablation
        known = ", ".join(a.name for a in self.ablations) or "none"
        raise ValueError(f"method '{self.method}' has no ablation '{name}' (known: {known})")
