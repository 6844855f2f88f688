"""`python -m services.vetting`: run the vetting service alone."""

from services.common.runner import run
from services.vetting.main import create_app
from services.vetting.settings import Settings


def main() -> None:
    run("vetting", Settings, create_app)


if __name__ == "__main__":
    main()
