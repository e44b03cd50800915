"""Appointment reminders: a downstream service of the electronic health book.

It consumes the ``appointments`` topic with its own consumer group and prints the SMS
reminder it would send for each REMINDER record: the appointment, the facility and the date.
It sees only the pseudonymous ``citizen_key`` (the topic carries no name, citizen ID or phone
number); a real service would look the phone number up in its own, access-controlled
directory by that key.

Quick start, on one machine::

    ehb up                                   # terminal 1: embedded broker + PostgreSQL
    ehb worker                               # terminal 2: the stream worker
    ehb simulate --events 5000 --days 60     # terminal 3: a simulated city (60 days, so
                                             #   that appointment dates come round)
    python examples/appointment_reminders.py # terminal 4: this service (Ctrl-C to stop)

(or ``ehb demo --days 60`` in terminal 1 instead of the first three). The service finds the
embedded broker by itself (``EHB_DATA_DIR``) or uses ``EHB_KAFKA_BOOTSTRAP``; run it twice
with the same ``--group`` and the two processes share the partitions.

Delivery is at least once: after a crash, a rebalance or an operator's ``ehb replay``, a
record can come again. The service therefore remembers which reminders it has sent (here in
memory; a real service keeps this in its own database, in the same transaction as the send).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections import Counter
from typing import TextIO

from ehb.consumer import Record, RecordConsumer
from ehb.logs import configure_logging
from ehb.settings import Settings
from schemas import SUBJECTS
from schemas.errors import EhbError
from schemas.records import AppointmentRecord
from schemas.reference import FacilityRegistry
from schemas.time import VN_TZ
from schemas.topics import APPOINTMENTS


class ReminderService:
    """Turns REMINDER records into (printed) SMS reminders, once per appointment."""

    def __init__(
        self, facilities: FacilityRegistry, out: TextIO = sys.stdout, verbose: bool = False
    ) -> None:
        self.facilities = facilities
        self.out = out
        self.verbose = verbose
        self.received: Counter[str] = Counter()
        self.sent: set[str] = set()

    def handle(self, records: list[Record[AppointmentRecord]]) -> None:
        """One batch; the consumer commits its offsets after this returns."""
        for record in records:
            appointment = record.value
            kind = appointment["record_type"]
            self.received[kind] += 1
            if self.verbose:
                self.out.write(f"received {kind} appointment={appointment['appointment_id']}\n")
            if kind == "REMINDER" and appointment["appointment_id"] not in self.sent:
                self.send_reminder(appointment)
                self.sent.add(appointment["appointment_id"])
        self.out.flush()

    def send_reminder(self, appointment: AppointmentRecord) -> None:
        facility = self.facilities.get(appointment["ma_cskcb"])
        name = facility.name if facility is not None else "unknown facility"
        when = appointment["appointment_at"].astimezone(VN_TZ)
        self.out.write(
            f"REMINDER appointment={appointment['appointment_id']} "
            f'facility={appointment["ma_cskcb"]} facility_name="{name}" '
            f"date={when:%Y-%m-%dT%H:%M%z} citizen_key={appointment['citizen_key']}\n"
        )

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.received.items()))
        return (
            f"received {sum(self.received.values())} appointment records ({kinds or 'none'});"
            f" {len(self.sent)} reminders sent"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--group",
        default="appointment-reminders",
        help="consumer group of this service (default: %(default)s)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also print every appointment record received"
    )
    args = parser.parse_args(argv)

    settings = Settings()  # the EHB_* environment, like every ehb process
    configure_logging(settings.log_level)
    service = ReminderService(FacilityRegistry.from_reference(), verbose=args.verbose)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        consumer = RecordConsumer(
            settings, args.group, [APPOINTMENTS], subjects=[SUBJECTS.APPOINTMENT_RECORD]
        )
    except EhbError as exc:  # e.g. no broker configured and no `ehb up` running
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"appointment reminders: consuming {', '.join(consumer.topics)} as group "
        f"{args.group}; Ctrl-C to stop",
        file=sys.stderr,
    )
    consumer.run(service.handle, batch_timeout=0.5, stop=stop)
    print(service.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
