"""Pools and addresses claimed on the key-value store, one create-if-absent transaction each.

libnetwork's allocator kept one bitmap per subnet and rewrote it with a compare-and-swap, so
every host fought over one key (and moby#33795 ended in duplicates). Here an address is the key
``S/addrs/<pool>/<ip>`` and claiming it is ``txn([absent(key)], [Put(key, owner)])``: of any
number of racers on any number of hosts exactly one wins, by construction; the losers move on to
the next candidate. Each host walks its candidates from its own next-fit cursor (as Docker's
allocator does), starting in a stripe of the range of its own, and remembers which ones it saw
taken, so hosts rarely race for one candidate and a host rarely tries a taken one twice.

A pool is the key ``S/pools/<cidr>``. The same pool (subnet and range) asked for on several
hosts is one pool shared by them (``S/users/<cidr>/<host>`` counts each host's RequestPools),
with one gateway. Two *different* pools that overlap are a property of two keys, so a new pool
also compares the address space's ``index`` key it read: a racer that claimed an overlapping
pool in between moved it, and the claim is tried again. Pools are claimed rarely (network
create), so that guard costs nothing where it matters: no address claim touches a shared key.

Record layout: :mod:`dockplug.drivers.ipam.records`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from dockplug.drivers.ipam.pools import (
    PROBES,
    SCAN_LIMIT,
    SPACES,
    Address,
    DefaultPool,
    Network,
    address_of,
    candidates,
    first_free,
    overlaps,
    parse_address,
    parse_network,
    probes,
    size,
    usable,
)
from dockplug.drivers.ipam.records import Allocation, Keys, PoolRecord, UserRecord, dump
from dockplug.errors import Conflict, InvalidRequest, NotFound
from dockplug.state.kv import (
    Compare,
    Delete,
    Entry,
    Get,
    KVStore,
    Op,
    Put,
    StoreUnavailable,
    absent,
    mod_revision_is,
)

CALL_DEADLINE = 5.0  # seconds one dockerd call may take, whatever the store does
RETRIES = 50  # rounds of a pool claim or release lost to racers before giving up


def _guard(key: str, entry: Entry | None) -> Compare:
    """The compare that KEY is still as read: absent, or unchanged since."""
    return absent(key) if entry is None else mod_revision_is(key, entry.mod_revision)


def pool_id(space: str, net: Network) -> str:
    return f"{space}/{net}"


def parse_pool_id(text: str) -> tuple[str, Network]:
    """``LocalDefault/10.1.0.0/24`` -> (space, pool); a PoolID this driver never gave fails."""
    space, _, cidr = text.partition("/")
    if space not in SPACES or not cidr:
        raise NotFound(
            f"no pool {text!r}: dockplug-net pool IDs look like LocalDefault/10.1.0.0/24 "
            "(was the network made with another IPAM driver?)"
        )
    try:
        return space, ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        raise NotFound(f"no pool {text!r}: {cidr!r} is not a CIDR prefix") from None


@dataclass
class _Cursor:
    """This host's next-fit position in one pool and the addresses it saw taken."""

    next: int | None = None
    taken: set[int] = field(default_factory=set)
    fresh: bool = False  # taken was read from the store since the last wrap-around
    trying: set[int] = field(default_factory=set)  # claims of this host under way


class Allocator:
    """The cluster IPAM's claims for the host HOST on STORE."""

    def __init__(
        self,
        store: KVStore,
        host: str,
        defaults: list[DefaultPool],
        keys: Keys | None = None,
        log: Callable[[str], None] = print,
        deadline: float = CALL_DEADLINE,
    ) -> None:
        self.store = store
        self.host = host
        self.defaults = defaults
        self.keys = keys or Keys()
        self.log = log
        self.deadline = deadline
        self._cursors: dict[tuple[str, Network], _Cursor] = {}

    # -- deadlines -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def bounded(self, what: str) -> AsyncIterator[None]:
        """At most DEADLINE seconds for one dockerd call (dockerd does not bound a legacy
        plugin's calls at all, moby#33994): a slow store becomes an error naming it."""
        try:
            async with asyncio.timeout(self.deadline):
                yield
        except StoreUnavailable as exc:
            if str(exc).startswith("dockplug-net"):
                raise
            raise StoreUnavailable(f"dockplug-net {what}: {exc}") from None
        except TimeoutError:
            raise StoreUnavailable(
                f"dockplug-net {what}: {self.store.name} did not answer within "
                f"{self.deadline:g} s; whether it changed anything is unknown. Fix: check the "
                "store is up and reachable from this host (dockplug net status), then retry"
            ) from None

    # -- pools ---------------------------------------------------------------------------------

    async def _read_space(
        self, space: str
    ) -> tuple[dict[str, tuple[Entry, PoolRecord]], Entry | None, dict[str, list[str]]]:
        """Every pool of SPACE, its index entry, and each pool's hosts, in one read."""
        result = await self.store.txn(
            [],
            [
                Get(self.keys.pools(space), prefix=True),
                Get(self.keys.index(space)),
                Get(self.keys.users(space), prefix=True),
            ],
        )
        pools = {e.key: (e, PoolRecord.load(e.value)) for e in result.results[0].entries}
        index = result.results[1].entries[0] if result.results[1].entries else None
        users: dict[str, list[str]] = {}
        for e in result.results[2].entries:
            parsed = self.keys.parse(e.key)
            if parsed is not None:
                users.setdefault(str(parsed[2]), []).append(parsed[3])
        return pools, index, users

    def _who(self, users: dict[str, list[str]], rec: PoolRecord) -> str:
        hosts = users.get(rec.pool) or [rec.created_by]
        return (
            "host " + ", ".join(sorted(hosts))
            if len(hosts) == 1
            else ("hosts " + ", ".join(sorted(hosts)))
        )

    async def request_pool(
        self, space: str, pool: str, sub_pool: str, v6: bool, private: bool
    ) -> tuple[str, Network]:
        """RequestPool: the pool asked for (joined when another host holds the very same
        one), or the first free default pool; never one overlapping another of SPACE."""
        if space not in SPACES:
            raise InvalidRequest(
                f"AddressSpace {space!r} is not one of dockplug-net's ({', '.join(SPACES)})"
            )
        wanted = parse_network(pool, "Pool (--subnet)") if pool else None
        if wanted is not None and wanted.version != (6 if v6 else 4):
            raise InvalidRequest(
                f"Pool {wanted} is IPv{wanted.version} but dockerd asked for an "
                f"IPv{6 if v6 else 4} pool (V6={v6})"
            )
        if sub_pool and wanted is None:
            raise InvalidRequest("SubPool (--ip-range) needs Pool (--subnet)")
        async with self.bounded(f"RequestPool {pool or '(any)'}"):
            for _ in range(RETRIES):
                got = await self._try_pool(space, wanted, sub_pool, v6, private)
                if got is not None:
                    return pool_id(space, got), got
                await asyncio.sleep(random.uniform(0, 0.02))
        raise Conflict(f"RequestPool {pool or '(any)'}: lost {RETRIES} races; try again")

    async def _try_pool(
        self, space: str, wanted: Network | None, sub_pool: str, v6: bool, private: bool
    ) -> Network | None:
        pools, index, users = await self._read_space(space)
        owner = self.host if private else None
        if wanted is None:
            net = first_free(
                self.defaults, v6, [ipaddress.ip_network(r.pool) for _, r in pools.values()]
            )
            range_ = net
        else:
            net = wanted
            range_ = parse_network(sub_pool, "SubPool (--ip-range)") if sub_pool else net
            if range_.version != net.version or not range_.subnet_of(net):  # type: ignore[arg-type]
                raise InvalidRequest(f"SubPool (--ip-range) {range_} is not inside {net}")
        key = self.keys.pool(space, net)
        user_key = self.keys.user(space, net, self.host)
        held = pools.get(key)
        if held is not None:
            entry, rec = held
            if rec.range != str(range_):
                raise Conflict(
                    f"pool {net} is in use with --ip-range {rec.range} by "
                    f"{self._who(users, rec)}: ask for the same range to share it, "
                    "or pick another subnet"
                )
            if rec.private is not None and rec.private != self.host:
                raise Conflict(
                    f"pool {net} is private to host {rec.private} (--ipam-opt private): "
                    "pick another subnet"
                )
            if private and rec.private is None:
                raise Conflict(
                    f"pool {net} is shared by {self._who(users, rec)}; it cannot become "
                    "private: drop --ipam-opt private or pick another subnet"
                )
            return net if await self._join(entry, user_key) else None
        for other_key, (_, rec) in pools.items():
            other = ipaddress.ip_network(rec.pool)
            if other_key != key and overlaps(other, net):
                raise Conflict(
                    f"pool {net} overlaps pool {other} of address space {space}, in use by "
                    f"{self._who(users, rec)}: pick a subnet outside {other}"
                )
        record = PoolRecord(
            pool=str(net),
            range=str(range_),
            v6=net.version == 6,
            created_by=self.host,
            private=owner,
        )
        user = self.keys.user(space, net, self.host)
        result = await self.store.txn(
            [absent(key), _guard(self.keys.index(space), index)],
            [
                Put(key, dump(record)),
                Put(self.keys.index(space), str(net).encode()),
                Put(user, dump(UserRecord(count=1))),
            ],
        )
        if result.succeeded:
            self.log(f"pool {net} ({space}) claimed" + (" (private)" if owner else ""))
            return net
        return None

    async def _join(self, pool_entry: Entry, user_key: str) -> bool:
        """One more RequestPool of a pool that exists: touches the pool key, so a release of
        its last user racing with this join sees it and keeps the pool."""
        mine = await self.store.get(user_key)
        count = UserRecord.load(mine.value).count if mine is not None else 0
        since = UserRecord.load(mine.value).since if mine is not None else time.time()
        result = await self.store.txn(
            [mod_revision_is(pool_entry.key, pool_entry.mod_revision), _guard(user_key, mine)],
            [
                Put(pool_entry.key, pool_entry.value),
                Put(user_key, dump(UserRecord(count=count + 1, since=since))),
            ],
        )
        return result.succeeded

    async def release_pool(self, text: str) -> None:
        """ReleasePool: this host's hold goes; with the last holder the pool, its gateway and
        any address left in it go too, in one transaction."""
        space, net = parse_pool_id(text)
        async with self.bounded(f"ReleasePool {text}"):
            for _ in range(RETRIES):
                done = await self.drop_user(space, net, self.host, all_of_it=False)
                if done is not None:
                    return
                await asyncio.sleep(random.uniform(0, 0.02))
        raise Conflict(f"ReleasePool {text}: lost {RETRIES} races; try again")

    async def drop_user(self, space: str, net: Network, host: str, all_of_it: bool) -> bool | None:
        """One RequestPool of HOST less (every one with ALL_OF_IT). True: done, False: nothing
        to release, None: a racer changed the pool, read again."""
        pool_key = self.keys.pool(space, net)
        result = await self.store.txn(
            [], [Get(pool_key), Get(self.keys.users(space, net), prefix=True)]
        )
        pool_entries, user_entries = result.results[0].entries, result.results[1].entries
        if not pool_entries:
            self.log(f"ReleasePool {pool_id(space, net)}: no such pool (already released)")
            return False
        user_key = self.keys.user(space, net, host)
        mine = next((e for e in user_entries if e.key == user_key), None)
        if mine is None:
            self.log(f"ReleasePool {pool_id(space, net)}: host {host} does not hold it")
            return False
        count = UserRecord.load(mine.value).count
        guard = [mod_revision_is(user_key, mine.mod_revision)]
        ops: list[Op]
        if count > 1 and not all_of_it:
            ops = [Put(user_key, dump(UserRecord(count=count - 1, since=time.time())))]
        elif len(user_entries) > 1:
            ops = [Delete(user_key)]
        else:
            guard.append(mod_revision_is(pool_key, pool_entries[0].mod_revision))
            ops = [
                Delete(user_key),
                Delete(pool_key),
                Delete(self.keys.gateway(space, net)),
                Delete(self.keys.addrs(space, net), prefix=True),
            ]
        done = await self.store.txn(guard, ops)
        if not done.succeeded:
            return None
        if len(ops) > 1:
            self._cursors.pop((space, net), None)
            self.log(f"pool {net} ({space}) released by its last host ({host})")
        return True

    # -- addresses -----------------------------------------------------------------------------

    async def _pool_record(self, space: str, net: Network) -> PoolRecord:
        entry = await self.store.get(self.keys.pool(space, net))
        if entry is None:
            raise NotFound(
                f"no pool {pool_id(space, net)} in {self.store.name}: it was released, or "
                "reclaimed after its hosts were away longer than --reclaim-after. Fix: "
                "remove and create the network again"
            )
        rec = PoolRecord.load(entry.value)
        if rec.private is not None and rec.private != self.host:
            raise Conflict(f"pool {net} is private to host {rec.private}")
        return rec

    async def request_address(
        self, text: str, address: str, gateway: bool, mac: str | None
    ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        """RequestAddress: the gateway (the pool's one, shared by its hosts), the address
        asked for (``--ip``, ``--aux-address``) or the next free one."""
        space, net = parse_pool_id(text)
        wanted = parse_address(address) if address else None
        if wanted is not None and wanted not in net:
            raise InvalidRequest(f"Address {wanted} is not in pool {net}")
        async with self.bounded(f"RequestAddress in {net}"):
            rec = await self._pool_record(space, net)
            if gateway:
                ip = await self._gateway(space, net, rec, wanted)
            elif wanted is not None:
                ip = await self._claim_wanted(space, net, wanted, mac)
            else:
                ip = await self._claim_next(space, net, rec, mac)
        return ipaddress.ip_interface(f"{ip}/{net.prefixlen}")

    def _record(self, kind: str, mac: str | None = None) -> bytes:
        return dump(Allocation(host=self.host, kind=kind, mac=mac))

    async def _gateway(
        self, space: str, net: Network, rec: PoolRecord, wanted: Address | None
    ) -> Address:
        gw_key = self.keys.gateway(space, net)
        for _ in range(RETRIES):
            entry = await self.store.get(gw_key)
            if entry is not None:
                current = ipaddress.ip_address(entry.value.decode())
                if wanted is not None and wanted != current:
                    raise Conflict(
                        f"pool {net} already has gateway {current}, shared by every host using "
                        f"the pool: give --gateway {current} or leave --gateway out"
                    )
                return current
            if wanted is not None:
                choice: list[Address] = [wanted]
            else:
                range_ = ipaddress.ip_network(rec.range)
                choice = list(itertools.islice(candidates(net, range_), 64))
            for ip in choice:
                key = self.keys.addr(space, net, ip)
                result = await self.store.txn(
                    [absent(gw_key), absent(key)],
                    [Put(gw_key, str(ip).encode()), Put(key, self._record("gateway"))],
                    [Get(gw_key), Get(key)],
                )
                if result.succeeded:
                    self.log(f"gateway {ip} of pool {net} claimed")
                    return ip
                if result.results[0].entries:
                    break  # another host set the gateway: use it
                if wanted is not None:
                    raise Conflict(await self._taken_message(space, net, ip))
        raise Conflict(f"no gateway could be claimed in pool {net}")

    async def _taken_message(self, space: str, net: Network, ip: Address) -> str:
        entry = await self.store.get(self.keys.addr(space, net, ip))
        if entry is None:
            return f"address {ip} was taken and released at once; try again"
        alloc = Allocation.load(entry.value)
        what = "the gateway of the pool" if alloc.kind == "gateway" else "in use"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(alloc.at))
        return (
            f"address {ip} is {what} (host {alloc.host}, since {since}): pick another --ip, "
            "or leave --ip out to get a free one"
        )

    async def _claim_wanted(
        self, space: str, net: Network, ip: Address, mac: str | None
    ) -> Address:
        key = self.keys.addr(space, net, ip)
        result = await self.store.txn([absent(key)], [Put(key, self._record("address", mac))])
        if not result.succeeded:
            raise Conflict(await self._taken_message(space, net, ip))
        return ip

    async def _refresh(self, space: str, net: Network, cursor: _Cursor) -> None:
        entries, _ = await self.store.range(self.keys.addrs(space, net))
        cursor.taken = {int(ipaddress.ip_address(e.key.rsplit("/", 1)[1])) for e in entries}
        cursor.fresh = True

    async def _stripe(self, space: str, net: Network, range_: Network) -> int:
        """Where this host starts looking: the i-th of n equal stripes of the range for the
        i-th of the pool's n hosts (by name), so hosts allocating at once rarely race for the
        same candidate; a pool of one host starts at its first address."""
        entries, _ = await self.store.range(self.keys.users(space, net))
        hosts = sorted({e.key.rsplit("/", 1)[1] for e in entries} | {self.host})
        first, last = usable(net, range_)
        return first + hosts.index(self.host) * (last - first + 1) // len(hosts)

    async def _claim_next(
        self, space: str, net: Network, rec: PoolRecord, mac: str | None
    ) -> Address:
        range_ = ipaddress.ip_network(rec.range)
        cursor = self._cursors.setdefault((space, net), _Cursor())
        if cursor.next is None:
            await self._refresh(space, net, cursor)
            cursor.next = await self._stripe(space, net, range_)
        record = self._record("address", mac)
        large = size(net, range_) > SCAN_LIMIT
        for _ in range(2):  # the second round after a fresh read of what is taken
            for value in probes(net, range_, cursor.next):
                if value in cursor.taken or value in cursor.trying:
                    continue
                # this host's concurrent requests spread over distinct candidates
                cursor.trying.add(value)
                cursor.next = value + 1
                ip = address_of(net, value)
                key = self.keys.addr(space, net, ip)
                try:
                    result = await self.store.txn([absent(key)], [Put(key, record)])
                finally:
                    cursor.trying.discard(value)
                cursor.taken.add(value)  # ours now, or a racer's on another host
                if result.succeeded:
                    cursor.fresh = False
                    return ip
            if cursor.fresh and not cursor.trying:
                break
            await self._refresh(space, net, cursor)
        if large:
            raise Conflict(
                f"no free address found in pool {net}"
                + (f" (range {range_})" if range_ != net else "")
                + f" after {2 * PROBES} probes ({len(cursor.taken)} allocated): the range is "
                "too full to probe. Fix: remove unused containers, run dockplug net gc, or "
                "use a larger --ip-range"
            )
        raise Conflict(
            f"no free address left in pool {net}"
            + (f" (range {range_})" if range_ != net else "")
            + f": all {len(cursor.taken)} are allocated. Fix: remove unused containers, or run "
            "dockplug net gc to free addresses no container holds"
        )

    async def release_address(self, text: str, address: str) -> None:
        """ReleaseAddress: frees an address this host holds. The shared gateway stays until
        the pool goes (dockerd releases it right before ReleasePool, on each host); another
        host's address is never freed by this one, whatever dockerd says."""
        space, net = parse_pool_id(text)
        if not address:
            return  # dockerd sends "" only for an endpoint that had no address
        ip = parse_address(address)
        async with self.bounded(f"ReleaseAddress {ip}"):
            key = self.keys.addr(space, net, ip)
            entry = await self.store.get(key)
            if entry is None:
                self.log(f"ReleaseAddress {ip} in {net}: not allocated (already released)")
                return
            alloc = Allocation.load(entry.value)
            if alloc.kind == "gateway":
                return
            if alloc.host != self.host:
                self.log(f"ReleaseAddress {ip} in {net}: held by host {alloc.host}; kept")
                return
            await self.store.txn([mod_revision_is(key, entry.mod_revision)], [Delete(key)])
        cursor = self._cursors.get((space, net))
        if cursor is not None:
            cursor.taken.discard(int(ip))
