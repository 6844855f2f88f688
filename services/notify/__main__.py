"""`python -m services.notify`: run the notify service alone."""

from services.common.runner import run
from services.notify.main import create_app
from services.notify.settings import Settings


def main() -> None:
    run("notify", Settings, create_app)


if __name__ == "__main__":
    main()
