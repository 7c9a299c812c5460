"""The import graph of ``app`` has no circle (issue 9).

The layers contract in pyproject.toml (``lint-imports``) forbids imports up the layers; inside a
layer, modules that may import each other could still close a circle, and a circle is what made
every command able to reach the runner that runs it. Type-checking-only imports count.
"""

from __future__ import annotations

import grimp


def test_no_module_of_the_app_imports_itself_back() -> None:
    graph = grimp.build_graph("app", exclude_type_checking_imports=False)
    circles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if graph.chain_exists(importer=imported, imported=importer):
                chain = graph.find_shortest_chain(importer=imported, imported=importer)
                circles.append(" -> ".join([importer, *(chain or ())]))
    assert circles == [], "\n".join(circles)
