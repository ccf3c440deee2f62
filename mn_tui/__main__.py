"""``mn-tui`` / ``python -m mn_tui``: start the app, or say in one line how to install the UI
libraries when Textual or Rich cannot be imported (exit 69, EX_UNAVAILABLE)."""

from __future__ import annotations

import sys

from mn_node.errors import EX_UNAVAILABLE

UI_PACKAGES = ("textual", "rich")


def main(argv: list[str] | None = None) -> int:
    try:
        from mn_tui.app import main as app_main
    except ImportError as e:
        top = (e.name or "").partition(".")[0]
        if top not in UI_PACKAGES:
            raise
        print(f"mn-tui: cannot import {e.name} ({e}); fix: python3 -m pip install 'textual>=0.80' "
              "(or reinstall mirror-neuron with its dependencies)", file=sys.stderr)
        return EX_UNAVAILABLE
    return app_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
