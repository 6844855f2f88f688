"""`python -m services.reporting`: run the reporting service alone."""

from services.common.runner import run
from services.reporting.main import create_app
from services.reporting.settings import Settings


def main() -> None:
    run("reporting", Settings, create_app)


if __name__ == "__main__":
    main()
