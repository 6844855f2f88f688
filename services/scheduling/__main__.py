"""`python -m services.scheduling`: run the scheduling service alone."""

from services.common.runner import run
from services.scheduling.main import create_app
from services.scheduling.settings import Settings


def main() -> None:
    run("scheduling", Settings, create_app)


if __name__ == "__main__":
    main()
