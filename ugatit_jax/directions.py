"""The two translation directions, named here once: ``"A2B"`` translates domain A's images into domain B.

A module of its own with no imports, below every layer: the models, the evaluator, the trainer and the commands
(translate, export, report) read the names from here instead of from one another.
"""

DIRECTIONS = ("A2B", "B2A")
REVERSE = {"A2B": "B2A", "B2A": "A2B"}


def domains(direction: str) -> tuple[str, str]:
    """("A", "B") for "A2B": the domain translated from, and the one translated into."""
    source, _, target = direction.partition("2")
    return source, target


def label(direction: str, arrow: str = "→") -> str:
    """ "A→B" for "A2B": how tables and plots name a direction."""
    return arrow.join(domains(direction))
