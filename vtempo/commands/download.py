"""`vtempo download NAME... | --all [--force] [--from-file PATH]`: fill the checkpoint cache."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vtempo.commands.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    console,
    download_progress,
    err_console,
    escape,
    friendly_errors,
)
from vtempo.errors import UsageError, VtempoError


def register(app: typer.Typer) -> None:
    @app.command("download")
    @friendly_errors
    def download_command(
        names: Optional[List[str]] = typer.Argument(None, metavar="NAME...", help="Registry entries (see `vtempo models`)."),
        all_entries: bool = typer.Option(False, "--all", help="Every entry whose weights can be downloaded."),
        force: bool = typer.Option(False, "--force", help="Download again even when cached."),
        from_file: Optional[Path] = typer.Option(
            None, "--from-file", metavar="PATH", help="Import a checkpoint you downloaded by hand (one NAME)."
        ),
        registry: Optional[Path] = typer.Option(
            None, "--registry", metavar="FILE", help="A user registry file extending checkpoints.yaml."
        ),
    ) -> None:
        """Download checkpoints into the cache, verified by size and hash, or import a hand-downloaded one."""
        from vtempo.weights import hub
        from vtempo.weights.registry import load_registry

        names = list(names or [])
        if all_entries == bool(names):
            raise UsageError("name the models to download, or pass --all")
        if from_file is not None and len(names) != 1:
            raise UsageError("--from-file imports one file: give exactly one NAME")
        entries = load_registry(registry)
        unknown = [name for name in names if name not in entries]
        if unknown:
            raise UsageError(f"no registry entry named {', '.join(unknown)}; `vtempo models` lists them")

        if from_file is not None:
            entry = entries[names[0]]
            path = hub.import_file(entry, from_file)
            console.print(f"{entry.name}: imported {from_file} → {path}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_OK)

        if all_entries:
            targets = [e for e in entries.values() if e.weights is not None and (e.weights.url or e.weights.manual_url)]
        else:
            targets = [entries[name] for name in names]
        failed = unavailable = 0  # unavailable: named entries with no weights to fetch (a usage error)
        for entry in targets:
            state = hub.cache_state(entry)
            if state == "none published":
                err_console.print(hub.none_published(entry), markup=False, highlight=False, soft_wrap=True)
                unavailable += 1
            elif state == "manual download":
                # With --all these are reported, not counted: nothing can fetch them automatically.
                err_console.print(hub.how_to_supply(entry), markup=False, highlight=False, soft_wrap=True)
                failed += not all_entries
            elif state in ("bundled", "local file"):
                console.print(f"{entry.name}: {state}, {hub.weights_path(entry)}", markup=False, highlight=False, soft_wrap=True)
            elif state == "cached" and not force:
                console.print(f"{entry.name}: cached, {hub.cache_path(entry)}", markup=False, highlight=False, soft_wrap=True)
            else:
                try:
                    with download_progress(entry.name) as progress:
                        path = hub.download(entry, force=force, progress=progress)
                except VtempoError as error:
                    err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
                    failed += 1
                    continue
                console.print(f"{entry.name}: downloaded, {path}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE if unavailable else EXIT_SOME_FAILED if failed else EXIT_OK)
