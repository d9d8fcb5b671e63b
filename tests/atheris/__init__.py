"""A coverage-guided fuzzing script (atheris), run by hand: not collected by pytest."""
