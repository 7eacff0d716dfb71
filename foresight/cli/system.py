"""Commands about the running system as a whole."""

from __future__ import annotations

import grpc

from foresight.cli.app import CliError, ExitCode, _state, app, client
from foresight.cli.output import CsvFlag, JsonFlag, Rows, print_json, table, write_csv

_SERVICES = ("trainer", "scorer", "segmenter")


@app.command()
def health(as_json: JsonFlag = False, as_csv: CsvFlag = False) -> None:
    """Health of the three services; exits 8 (unavailable) unless every one is SERVING."""
    config = _state["config"]
    rows: list[tuple[str, str, str]] = []
    with client() as c:
        for name in _SERVICES:
            try:
                status = c.health(name)
            except grpc.RpcError as exc:
                status = exc.code().name if isinstance(exc, grpc.Call) else "UNREACHABLE"
            rows.append((name, getattr(config, name), status))
    result = Rows(("service", "address", "status"), rows)
    if as_json:
        print_json([dict(zip(result.columns, r, strict=True)) for r in rows])
    elif as_csv:
        write_csv(result)
    else:
        from foresight.cli.app import console

        console.print(table(result))
    down = [name for name, _, status in rows if status != "SERVING"]
    if down:
        raise CliError("UNAVAILABLE", f"not serving: {', '.join(down)}", ExitCode.UNAVAILABLE)
