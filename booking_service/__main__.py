"""``python -m booking_service``: the ``booking-service`` command, which lives in ``booking_service.cli``."""

from booking_service.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
