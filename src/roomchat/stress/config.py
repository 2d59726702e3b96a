"""What a stress run does: its configuration, shared by the CLI, the runner and the workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from roomchat.protocol import DEFAULT_PORT, NAME_MAX_LENGTH, valid_name

__all__ = [
    "DEFAULT_RAMP",
    "ENGINES",
    "Config",
    "Engine",
    "LoadStep",
    "RampConfig",
    "RunConfig",
    "SteadyConfig",
    "parse_steps",
    "rooms_of_user",
]


Engine = Literal["asyncio", "epoll"]
ENGINES: tuple[Engine, ...] = ("asyncio", "epoll")


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
    port: int = DEFAULT_PORT
    #: Further servers sharing the rooms (instances behind one Redis): user i connects to
    #: the (i mod n)-th of host:port and these, so the users are split evenly.
    more_addrs: tuple[tuple[str, int], ...] = ()
    rooms: int = 24  # how many of the server's rooms (in its login order) to use
    rooms_per_user: int = 5
    payload: int = 64  # bytes of message content (at least the stamp's length)
    processes: int = 1
    connect_timeout: float = 10.0
    connect_batch: int = 500  # connections opened at once, per process (batch connecting)
    drain_timeout: float = 10.0  # after the last send, how long to wait for deliveries
    settle_timeout: float = 60.0  # steady: how long to wait for the join storm to pass
    grace: float = 30.0  # how long a phase may overrun its plan before the run is abandoned
    #: Joining kept up with arrivals when every user had all its rooms confirmed within
    #: this many seconds of starting to connect (see Report.joins_kept_up).
    join_bound: float = 1.0

    tls: bool | str = False  # TLS: True checks against the system's CAs, a str is a CA file
    #: Say hello for protocol v2 (a server without v2 leaves the sessions in v1).
    v2: bool = False
    #: v2: user i asks for the name f"{name_prefix}{i}"; None: keep the random ids.
    name_prefix: str | None = None

    def address_of(self, user: int) -> tuple[str, int]:
        """The server that user (global index) connects to."""
        if not self.more_addrs:
            return self.host, self.port
        index = user % (len(self.more_addrs) + 1)
        return (self.host, self.port) if index == 0 else self.more_addrs[index - 1]

    @property
    def addr(self) -> str:
        """Every server loaded, as host:port[,host:port...]."""
        return ",".join(f"{h}:{p}" for h, p in ((self.host, self.port), *self.more_addrs))

    def name_of(self, user: int) -> str | None:
        """The name user (global index) asks for in its hello; None: its random id."""
        return None if self.name_prefix is None else f"{self.name_prefix}{user}"

    def __post_init__(self) -> None:
        if self.rooms < 1 or not 1 <= self.rooms_per_user <= self.rooms:
            raise ValueError("need rooms >= 1 and 1 <= rooms-per-user <= rooms")
        if self.processes < 1 or self.connect_batch < 1:
            raise ValueError("processes and connect batch must be >= 1")
        if min(self.payload, self.drain_timeout, self.settle_timeout, self.grace) < 0:
            raise ValueError("payload and drain timeout must not be negative")
        if self.join_bound <= 0:
            raise ValueError("join bound must be > 0")
        if self.name_prefix is not None:
            if not self.v2:
                raise ValueError("name prefix needs v2 (names are a v2 feature)")
            # room for up to 7 digits of user index (10 million users)
            if not valid_name(self.name_prefix + "0") or (
                len(self.name_prefix) + 7 > NAME_MAX_LENGTH
            ):
                raise ValueError(
                    f"name prefix {self.name_prefix!r}: names are ASCII letters, digits, _ - ."
                    f" and the prefix at most {NAME_MAX_LENGTH - 7} characters"
                )


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
    #: Users per second arriving (each connects, then sends its joins at once), spread
    #: evenly: a reconnect wave. 0: connect in batches of ``connect_batch`` instead.
    connect_rate: float = 0.0
    #: How the users run. "asyncio": through the client library, each delivery a
    #: callback (checked or counted). "epoll": after connecting and joining, every user
    #: of a process is a raw socket in one epoll loop that writes pre-built batches and
    #: counts deliveries undecoded (roomchat.stress.rawload): far fewer CPU cycles per
    #: delivery, for finding the server's ceiling rather than the tool's.
    engine: Engine = "asyncio"

    mode: ClassVar[str] = "steady"
    #: Every member gets every measured message of its rooms: counts suffice.
    logs_stamps: ClassVar[bool] = False
    #: Users connect (and join) before the load starts, not during it.
    arrives_while_sending: ClassVar[bool] = False

    def __post_init__(self) -> None:
        RunConfig.__post_init__(self)
        if self.users < 1 or self.rate <= 0 or self.duration <= 0 or self.warmup < 0:
            raise ValueError("need users >= 1, rate > 0, duration > 0, warmup >= 0")
        if self.check_every < 1:
            raise ValueError("check-every must be >= 1")
        if self.connect_rate < 0:
            raise ValueError("connect-rate must be >= 0")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
        if self.engine == "epoll" and (self.v2 or self.tls or self.connect_rate):
            # Raw sockets: no TLS layer, no v2 pings to answer, users connect in batches.
            raise ValueError("the epoll engine speaks plain-TCP v1, users connecting in batches")

    @property
    def message_rate(self) -> float:
        """Messages per second per user."""
        return self.rate

    @property
    def send_interval(self) -> float:
        """Seconds between one user's messages."""
        return 1 / self.rate

    def checks(self, user: int) -> bool:
        """Whether this user (global index) checks every delivery or only counts."""
        return user % self.check_every == 0

    def start_times(self) -> list[float] | None:
        """Seconds after the connecting starts at which each user (by global index)
        connects; None: in batches, as fast as the server accepts them."""
        if self.connect_rate == 0:
            return None
        return [user / self.connect_rate for user in range(self.users)]

    def first_send_delay(self, user: int) -> float | None:
        """Steady users send on the common schedule, not from when they joined."""
        return None

    def connect_seconds(self, users: int) -> float:
        """How long connecting and joining ``users`` (one process's share) may take."""
        batches = -(-users // self.connect_batch)
        arrivals = self.users / self.connect_rate if self.connect_rate else 0.0
        return arrivals + self.connect_timeout * (batches + 1) + users / 1000 + self.settle_timeout

    def load_seconds(self) -> float:
        """How long sending lasts, from the common start time."""
        return self.warmup + self.duration


@dataclass(frozen=True, slots=True)
class RampConfig(RunConfig):
    """Ramp mode, the original's: users arrive in load increments; each sends one message
    every ``delay`` seconds to its rooms in turn. Every message is measured."""

    steps: tuple[LoadStep, ...] = field(default_factory=lambda: parse_steps(DEFAULT_RAMP))
    delay: float = 10.0

    mode: ClassVar[str] = "ramp"
    #: Members joined mid-run: each expects only what was sent after it joined.
    logs_stamps: ClassVar[bool] = True
    arrives_while_sending: ClassVar[bool] = True
    warmup: ClassVar[float] = 0.0
    check_every: ClassVar[int] = 1  # every user checks every delivery
    connect_rate: ClassVar[float] = 0.0  # arrivals follow the steps
    engine: ClassVar[Engine] = "asyncio"

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

    @property
    def message_rate(self) -> float:
        return 1 / self.delay

    @property
    def send_interval(self) -> float:
        return self.delay

    def checks(self, user: int) -> bool:
        return True

    def first_send_delay(self, user: int) -> float | None:
        """Seconds from joining to the user's first message: golden-ratio phases spread
        the users' sends evenly over the delay."""
        return (user * 0.6180339887) % 1.0 * self.delay

    def connect_seconds(self, users: int) -> float:
        return 0.0  # ramp users connect while the load runs

    def load_seconds(self) -> float:
        return self.duration + self.connect_timeout

    def start_times(self) -> list[float]:
        """Seconds after the load starts at which each user (by global index) connects."""
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


#: A run's configuration: both modes answer the same questions (mode, users, start_times,
#: checks, logs_stamps, first_send_delay, connect_seconds, load_seconds, ...).
Config = SteadyConfig | RampConfig
