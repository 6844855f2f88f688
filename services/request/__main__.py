"""`python -m services.request`: run the request service alone."""

from services.common.runner import run
from services.request.main import create_app
from services.request.settings import Settings


def main() -> None:
    run("request", Settings, create_app)


if __name__ == "__main__":
    main()
