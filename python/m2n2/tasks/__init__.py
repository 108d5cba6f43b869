"""Tasks the `m2n2` command can evolve, by name."""
from .digits import DigitsTask

TASKS = {"digits": DigitsTask}


def get_task(name, **kwargs):
    """A task instance by name; ValueError naming the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)
