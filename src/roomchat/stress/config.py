"""What a stress run does: its configuration, shared by the CLI, the runner and the workers."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_RAMP",
    "LoadStep",
    "RampConfig",
    "RunConfig",
    "SteadyConfig",
    "parse_steps",
    "rooms_of_user",
]


@dataclass(frozen=True, slots=True)
class LoadStep:
    """One load increment of ramp mode: reach ``users`` in total, ``after`` seconds
    after the previous increment ended, adding users in ``steps`` equal steps."""

    users: int
    after: float
    steps: int


#: The original stress test's ramp: 1,200 users over 60 s in 60 steps, then up to
#: 2,400 over the next 120 s in 120 steps.
DEFAULT_RAMP = "1200/60/60,2400/120/120"


def parse_steps(text: str) -> tuple[LoadStep, ...]:
    """Parse ``users/after/steps[,users/after/steps...]``; totals must not go down."""
    steps: list[LoadStep] = []
    previous = 0
    for part in text.split(","):
        fields = part.strip().split("/")
        if len(fields) != 3:
            raise ValueError(f"load step {part!r} is not users/after-seconds/steps")
        try:
            users, after, count = int(fields[0]), float(fields[1]), int(fields[2])
        except ValueError:
            raise ValueError(f"load step {part!r} is not users/after-seconds/steps") from None
        if users < previous or after < 0 or count < 1:
            raise ValueError(f"load step {part!r}: users must not go down, steps must be >= 1")
        steps.append(LoadStep(users, after, count))
        previous = users
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """What every mode shares."""

    host: str = "127.0.0.1"
    port: int = 8080
    rooms: int = 24  # how many of the server's rooms (in its login order) to use
    rooms_per_user: int = 5
    payload: int = 64  # bytes of message content (at least the stamp's length)
    processes: int = 1
    connect_timeout: float = 10.0
    connect_batch: int = 500  # connections opened at once, per process
    drain_timeout: float = 10.0  # after the last send, how long to wait for deliveries
    settle_timeout: float = 60.0  # steady: how long to wait for the join storm to pass
    grace: float = 30.0  # how long a phase may overrun its plan before the run is abandoned
    tls: bool | str = False  # TLS: True checks against the system's CAs, a str is a CA file

    def __post_init__(self) -> None:
        if self.rooms < 1 or not 1 <= self.rooms_per_user <= self.rooms:
            raise ValueError("need rooms >= 1 and 1 <= rooms-per-user <= rooms")
        if self.processes < 1 or self.connect_batch < 1:
            raise ValueError("processes and connect batch must be >= 1")
        if min(self.payload, self.drain_timeout, self.settle_timeout, self.grace) < 0:
            raise ValueError("payload and drain timeout must not be negative")


@dataclass(frozen=True, slots=True)
class SteadyConfig(RunConfig):
    """Steady mode: every user connects and joins, then all send at a fixed rate."""

    users: int = 48
    rate: float = 1.0  # messages per second per user, spread evenly
    duration: float = 10.0  # measured seconds
    warmup: float = 2.0  # seconds of load before the measured window
    #: One user in ``check_every`` checks each delivery (order, duplicates, latency); the
    #: others count theirs in bulk without decoding, so that one load core can take in
    #: millions of deliveries a second. 1: every user checks every delivery.
    check_every: int = 1

    def __post_init__(self) -> None:
        RunConfig.__post_init__(self)
        if self.users < 1 or self.rate <= 0 or self.duration <= 0 or self.warmup < 0:
            raise ValueError("need users >= 1, rate > 0, duration > 0, warmup >= 0")
        if self.check_every < 1:
            raise ValueError("check-every must be >= 1")

    def checks(self, user: int) -> bool:
        """Whether this user (global index) checks every delivery or only counts."""
        return user % self.check_every == 0


@dataclass(frozen=True, slots=True)
class RampConfig(RunConfig):
    """Ramp mode, the original's: users arrive in load increments; each sends one message
    every ``delay`` seconds to its rooms in turn. Every message is measured."""

    steps: tuple[LoadStep, ...] = field(default_factory=lambda: parse_steps(DEFAULT_RAMP))
    delay: float = 10.0

    def __post_init__(self) -> None:
        RunConfig.__post_init__(self)
        if not self.steps or self.delay <= 0:
            raise ValueError("need at least one load step and delay > 0")

    @property
    def users(self) -> int:
        return self.steps[-1].users

    @property
    def duration(self) -> float:
        return sum(step.after for step in self.steps)

    def start_times(self) -> list[float]:
        """Seconds after the start at which each user (by global index) connects."""
        times: list[float] = []
        begin, previous = 0.0, 0
        for step in self.steps:
            added = step.users - previous
            for i in range(added):
                # User i of this increment arrives with step (i * steps // added).
                times.append(begin + step.after * ((i * step.steps) // added) / step.steps)
            begin += step.after
            previous = step.users
        return times


def rooms_of_user(user: int, rooms: int, rooms_per_user: int) -> list[int]:
    """The rooms (indexes into the rooms used) of a user, assigned round-robin."""
    first = user * rooms_per_user
    return [(first + j) % rooms for j in range(rooms_per_user)]
