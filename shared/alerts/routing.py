"""Routing: `route_matches` walks the routing file's route tree (`shared.routing_file`) the way Alertmanager does.

A route matches when all its matchers do (`=`, `!=`, `=~`, `!~` on labels; a missing label is ""; regexes are
anchored). Children are tried in order; the first that matches is descended into, and its siblings are
tried too only when it says `continue: true`. A node whose children all miss routes to its own receiver.
"""

from __future__ import annotations

from ..routing_file import NotifyConfig, Receiver, Route
from .model import Alert


def route_matches(alert: Alert, config: NotifyConfig) -> list[tuple[Receiver, str]]:
    """The receivers an alert goes to (at least the root's), in tree order, each once, with the path of the
    route that chose it (`route`, `route.routes[1]`, ...)."""
    found: dict[str, str] = {}

    def walk(route: Route, inherited: str, path: str) -> bool:
        if not all(m.matches(alert.labels) for m in route.parsed_matchers()):
            return False
        receiver = route.receiver or inherited
        matched_child = False
        for index, child in enumerate(route.routes):
            if walk(child, receiver, f"{path}.routes[{index}]"):
                matched_child = True
                if not child.continue_:
                    break
        if not matched_child:
            found.setdefault(receiver, path)
        return True

    walk(config.route, config.route.receiver or "", "route")
    return [(config.receiver(name), path) for name, path in found.items()]
