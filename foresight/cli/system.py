"""Commands about the running system as a whole."""

from __future__ import annotations

from foresight.cli.app import app, client, console


@app.command()
def health() -> None:
    """Health of the three services."""
    with client() as c:
        for name in ("trainer", "scorer", "segmenter"):
            try:
                status = c.health(name)
            except Exception as exc:
                status = f"unreachable ({type(exc).__name__})"
            console.print(f"{name:10s} {status}")
