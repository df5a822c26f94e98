"""`vtempo models [--registry FILE] [--json]`: the registry's checkpoints and where their weights are."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from vtempo.commands.common import console, escape, friendly_errors


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def register(app: typer.Typer) -> None:
    @app.command("models")
    @friendly_errors
    def models_command(
        registry: Optional[Path] = typer.Option(
            None, "--registry", metavar="FILE", help="A user registry file extending checkpoints.yaml."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
    ) -> None:
        """List the named checkpoints (architecture, data, frames, top-1, GMACs, weights) and the architectures."""
        from vtempo.models import architecture_names
        from vtempo.weights import hub
        from vtempo.weights.registry import load_registry

        entries = load_registry(registry)
        architectures = architecture_names()
        if as_json:
            models = []
            for entry in entries.values():
                state = hub.cache_state(entry)
                weights = entry.weights
                models.append({
                    "name": entry.name,
                    "arch": entry.arch,
                    "dataset": entry.dataset,
                    "num_classes": entry.num_classes,
                    "frames": entry.frames,
                    "labels": entry.labels,
                    "top1": entry.top1,
                    "paper_gmacs": entry.paper_gmacs,
                    "weights": state,
                    "path": str(hub.cache_path(entry)) if state == "cached" else None,
                    "layout": weights.layout if weights else None,
                    "url": (weights.url or weights.manual_url) if weights else None,
                    "sha256": weights.sha256 if weights else None,
                    "registry": entry.source,
                    "notes": entry.notes,
                })
            typer.echo(json.dumps({"models": models, "architectures": architectures}, indent=2))
            return

        table = Table(title="Registry checkpoints", title_justify="left", box=box.SIMPLE_HEAD)
        for column, justify in (("name", "left"), ("architecture", "left"), ("dataset", "left"), ("frames", "right"),
                                ("top-1", "right"), ("GMACs", "right"), ("weights", "left")):
            table.add_column(column, justify=justify, no_wrap=column in ("name", "weights"))
        for entry in entries.values():
            table.add_row(entry.name, entry.arch, escape(entry.dataset or "—"), str(entry.frames), _number(entry.top1),
                          _number(entry.paper_gmacs), hub.cache_state(entry))
        console.print(table)
        console.print(
            "Architectures (random weights; any --num-classes and --frames): " + ", ".join(architectures),
            highlight=False,
        )
        console.print(f"Cache: {hub.cache_dir()}", markup=False, highlight=False, soft_wrap=True)
