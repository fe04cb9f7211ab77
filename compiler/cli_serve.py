"""``vmmc serve REPO``: serve a model repository over KServe v2 and the OpenAI API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve_cmd(
    repository: Annotated[
        Path,
        typer.Argument(
            help="A directory of models (.vmm artifacts, .onnx, .gguf) with an optional serve.toml."
        ),
    ],
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8000,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 serves other machines too.")
    ] = "127.0.0.1",
    config: Annotated[
        Path | None,
        typer.Option("--config", help="A serve.toml / serve.json to use instead of REPO's."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    no_access_log: Annotated[
        bool, typer.Option("--no-access-log", help="No JSON access-log line per request.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option("--check", help="Validate the repository and its config, list it, exit."),
    ] = False,
) -> None:
    """Serve REPO: KServe v2 (tritonclient) at /v2, the OpenAI API at /v1, metrics at /metrics."""
    from ai_vmm.serve.config import read_config_file, validate_config
    from ai_vmm.serve.repository import open_repository

    raw = None if config is None else validate_config(read_config_file(config), str(config))
    if check:
        from rich.console import Console
        from rich.table import Table

        repo = open_repository(repository, raw)
        table = Table(title=f"{repo.root}", title_justify="left")
        for column in ("model", "version", "kind", "source", "batching", "load", "pinned"):
            table.add_column(column)
        for spec in repo.models:
            batching = spec.config.batching
            table.add_row(
                spec.name,
                spec.version,
                spec.kind,
                str(spec.source),
                "deploy's batch"
                if batching.max_batch is None
                else f"max {batching.max_batch}, {batching.max_queue_delay_ms:g} ms"
                if batching.max_batch
                else "off",
                spec.config.load,
                "yes" if spec.config.pinned else "no",
            )
        console = Console(highlight=False)
        console.print(table)
        cfg = repo.config
        console.print(
            f"classes: {', '.join(sorted(cfg.classes))}; tenants: {len(cfg.tenants)}"
            + ("" if cfg.tenants else " (no API keys: every request is served)")
        )
        return
    from ai_vmm.serve.server import serve

    serve(
        repository,
        host=host,
        port=port,
        config=raw,
        log_level=log_level.lower(),
        access_log=False if no_access_log else None,
    )
