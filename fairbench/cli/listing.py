"""`fairbench ls`: registry contents as tables."""

from __future__ import annotations

from rich.table import Table

from fairbench.outputs.tables import terminal_console


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[str(x) for x in r])
    terminal_console().print(table)


def list_kind(kind: str) -> None:
    """Print one registry."""
    if kind == "methods":
        from fairbench.methods import METHODS

        _table("methods", ["name", "level", "architectures", "source"],
               [[e.name, e.meta["level"], ", ".join(e.obj.architectures), e.meta["source"]] for e in METHODS])
    elif kind == "models":
        from fairbench.models import MODELS

        rows = [[e.name, e.obj, e.meta.get("family", "")] for e in MODELS]
        rows.append(["<hub id>", "org/name", "any diffusers text-to-image pipeline on the model hub"])
        rows.append(["<folder>", "path", "a local diffusers pipeline folder (e.g. from make-tiny-sd)"])
        _table("models", ["name", "source", "notes"], rows)
    elif kind == "suites":
        from fairbench.prompts import SUITES, load_suite_file

        rows = []
        for e in SUITES:
            s = load_suite_file(e.obj)
            n_train = sum(p.split == "train" for p in s.prompts)
            rows.append([e.name, f"v{s.version}", len(s.prompts), f"{n_train}/{len(s.prompts) - n_train}", s.template])
        _table("suites", ["name", "version", "prompts", "train/test", "template"], rows)
    elif kind == "classifiers":
        from fairbench.classifiers import CLASSIFIERS

        _table("classifiers", ["name", "attributes", "source"],
               [[e.name, ", ".join(e.obj.attributes) or "(configurable)", e.meta["source"]] for e in CLASSIFIERS])
    elif kind == "detectors":
        from fairbench.faces import DETECTORS

        _table("face detectors", ["name", "source"], [[e.name, e.meta["source"]] for e in DETECTORS])
    elif kind == "metrics":
        from fairbench.metrics.fairness import FAIRNESS_METRICS

        _table("fairness metrics", ["name", "higher is better", "anchor", "definition"],
               [[e.name, e.obj.higher_is_better, e.obj.anchor, (e.obj.fn.__doc__ or "").split(":", 1)[-1].strip()]
                for e in FAIRNESS_METRICS])
    elif kind == "extractors":
        from fairbench.metrics.features import EXTRACTORS

        _table("feature extractors (FD/KID)", ["name", "source"], [[e.name, e.meta["source"]] for e in EXTRACTORS])
    elif kind == "encoders":
        from fairbench.models.dual_encoder import DUAL_ENCODERS

        rows = [[e.name, e.obj, e.meta.get("notes", "")] for e in DUAL_ENCODERS]
        rows.append(["<hub id or folder>", "", "any dual encoder with text and image features (CLIP, SigLIP, ...)"])
        _table("vision-language models (clip classifier, --clip-model, clip extractor)", ["name", "source", "notes"],
               rows)
    elif kind == "attributes":
        from fairbench.prompts import load_attributes

        _table("attributes", ["name", "groups", "description"],
               [[n, ", ".join(a.group_names), a.description] for n, a in load_attributes().items()])
