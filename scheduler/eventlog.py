"""Who did something, from which door, and why: the actor of every operator action.

Every door (admin, console, command line, API) builds one `Actor` and passes it to the model
method it calls; the method writes it into the event it records.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    name: str  # a user name, or a member's name for what a node does on its own
    source: str = ""  # the door: admin, console, cli, api, node
    reason: str = ""  # the operator's words, if asked for one

    def __str__(self) -> str:
        return self.name
