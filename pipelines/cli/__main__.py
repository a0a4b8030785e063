"""``python -m oneshot.pipelines.cli``: the same as the ``oneshot`` command."""
from oneshot.pipelines.cli import main

main(prog_name="oneshot")
