"""Sphinx configuration for trio_hub's documentation.

Build it with ``nox -s docs`` (``sphinx-build -W -n -b html docs docs/_build/html``):
every warning is an error, and every cross-reference must resolve (``nitpicky``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from docutils.nodes import Node, TextElement
    from sphinx.addnodes import pending_xref
    from sphinx.application import Sphinx
    from sphinx.environment import BuildEnvironment

HERE = Path(__file__).resolve().parent
# Build against the working tree, not whatever trio_hub happens to be installed.
sys.path.insert(0, str(HERE.parent))

import trio_hub  # noqa: E402  (needs the path above)

project = "trio_hub"
author = "trio_hub developers"
copyright = "trio_hub developers"
release = trio_hub.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinxcontrib_trio",
]

# changes/: one entry per change, pulled into changelog.rst with ".. include::".
exclude_patterns = ["_build", "examples", "_intersphinx", "changes", "Thumbs.db", ".DS_Store"]
# Plain `backquotes` are cross-references, as in trio's own docs.
default_role = "py:obj"
primary_domain = "py"
nitpicky = True

# -- autodoc and napoleon (the docstrings are Google style) -----------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True


# JSONValue is recursive: expanded, it makes Message's signature unreadable.
# prometheus-client publishes no Sphinx inventory; its registry class is named
# in HubServer.metrics_registry's signature.
nitpick_ignore = [("py:class", "CollectorRegistry")]
autodoc_type_aliases = {
    "JSONValue": "trio_hub.JSONValue",
    "PresenceEvents": "trio_hub.PresenceEvents",
}

# -- intersphinx --------------------------------------------------------------
# The inventories are committed under docs/_intersphinx/ so that the build (and
# CI) never needs the network: trio's was built from trio 0.35.0's own docs
# sources, Python's and trio-websocket's come from Debian's python3.11-doc and
# python-trio-websocket-doc packages. docs/_intersphinx/README.rst says how to
# refresh them.

intersphinx_mapping = {
    "python": ("https://docs.python.org/3.11", str(HERE / "_intersphinx" / "python.inv")),
    "trio": ("https://trio.readthedocs.io/en/stable", str(HERE / "_intersphinx" / "trio.inv")),
    "trio-websocket": (
        "https://trio-websocket.readthedocs.io/en/stable",
        str(HERE / "_intersphinx" / "trio-websocket.inv"),
    ),
}

# -- HTML -----------------------------------------------------------------------

html_theme = "furo"
html_title = f"trio_hub {release}"
html_static_path: list[str] = []


def setup(app: Sphinx) -> None:
    """Hide private constructors; send trio-websocket's private names to public ones."""
    app.connect("autodoc-process-signature", _hide_private_constructor)
    app.connect("missing-reference", _public_trio_websocket_name)


# Names that trio_hub's annotations use, as they appear to autodoc, mapped to
# where they are documented.
_ALIASES = {
    # trio-websocket defines its classes in a private module and re-exports them;
    # its inventory lists only the public names.
    "trio_websocket._impl.WebSocketConnection": "trio_websocket.WebSocketConnection",
    "WebSocketConnection": "trio_websocket.WebSocketConnection",
}


def _public_trio_websocket_name(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: TextElement
) -> Node | None:
    target = _ALIASES.get(node.get("reftarget", ""))
    if target is None:
        return None
    from sphinx.ext.intersphinx import missing_reference

    aliased = node.deepcopy()
    aliased["reftarget"] = target
    return missing_reference(app, env, aliased, contnode)


def _hide_private_constructor(
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str | None] | None:
    # Hub, Client and HubServer have no public constructor (they come from
    # open_hub(), Hub.register() and serve_hub()), and the testing kit's
    # MemoryClient and MemoryTransport come from memory_connection(): their
    # __init__ arguments are private types, so showing them would only mislead.
    from trio_hub._util import NoPublicConstructor

    if what == "class" and (isinstance(obj, NoPublicConstructor) or name in _MADE_BY_FACTORY):
        return "", return_annotation
    return None


_MADE_BY_FACTORY = {"trio_hub.testing.MemoryClient", "trio_hub.testing.MemoryTransport"}
