"""Stage 3 decisions: which site each DataTransferPackage goes to.

Primary routes (SOURCE site -> LTA sites) are chosen round-robin per source site, with the
position kept in ``round_robin_state`` (durable across restarts) and advanced by one atomic
UPDATE so two callers never get the same slot. Every planner here runs under a planner
lock (:mod:`ccat_dagster.lifecycle.common.locks`): a bundle is routed once even when the bundle
sensor and a bundle run plan at the same time. Secondary routes (LTA site -> every other
LTA site) make sure each package reaches every archive. Active DataTransferRoute rows override
the automatic choice: DIRECT (to that site's buffer), CUSTOM (to an explicit location), RELAY
(first to the relay site's buffer, then onwards).
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import case, exists, select, update
from sqlalchemy.orm import Session, aliased

from ccat_dagster.lifecycle.common.chunks import chunks
from ccat_dagster.lifecycle.common.locations import (
    get_primary_buffer_for_site,
    is_lta_site,
    lta_sites,
)
from ccat_dagster.lifecycle.common.locks import ROUTING, planner_lock, scope
from ccat_ops_db.audit import audit
from ccat_ops_db.models import (
    DataLocation,
    DataTransfer,
    DataTransferPackage,
    DataTransferPackagePhysicalCopy,
    DataTransferRoute,
    PhysicalCopyStatus,
    RoundRobinState,
    RouteType,
    Site,
    Status,
    utcnow,
)
from ccat_ops_db.session import dialect_insert

PRIMARY = "primary"
SECONDARY = "secondary"
RELAY = "relay"
#: the planner lock of secondary and relay-onward routes (both may target the same buffer)
SECONDARY_SCOPE = scope(ROUTING, SECONDARY)


def next_lta_site(session: Session, source_site: Site) -> Site:
    """The next LTA site for ``source_site`` in round-robin order (durable, atomic).

    One UPDATE ... RETURNING advances the position, so two callers at once (on PostgreSQL and
    on SQLite, inside a planner lock or not) never get the same slot.
    """
    sites = lta_sites(session)
    if not sites:
        raise LookupError(
            "no active LONG_TERM_ARCHIVE location in the topology: nothing can be archived; "
            "add one and run `ccat topology apply`"
        )
    key = f"primary:{source_site.short_name}"
    session.execute(
        dialect_insert(session, RoundRobinState)
        .values(key=key, last_index=-1, updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=["key"])
    )
    index = session.scalars(
        update(RoundRobinState)
        .where(RoundRobinState.key == key)
        .values(last_index=(RoundRobinState.last_index + 1) % len(sites), updated_at=utcnow())
        .returning(RoundRobinState.last_index)
        .execution_options(synchronize_session=False)
    ).one()
    return sites[index]


def _custom_route(session: Session, site: Site) -> DataTransferRoute | None:
    return session.scalar(
        select(DataTransferRoute)
        .where(DataTransferRoute.origin_site_id == site.id, DataTransferRoute.active.is_(True))
        .order_by(DataTransferRoute.id)
    )


def _buffer_of(session: Session, site: Site) -> DataLocation:
    buffer = get_primary_buffer_for_site(session, site)
    if buffer is None:
        raise LookupError(
            f"site {site.short_name!r} has no active BUFFER to receive transfers; "
            "activate one in the topology"
        )
    return buffer


def primary_destination(session: Session, source_site: Site) -> tuple[DataLocation, str]:
    """Destination buffer and route kind for the next DataTransferPackage of ``source_site``."""
    route = _custom_route(session, source_site)
    if route is not None:
        if route.route_type == RouteType.CUSTOM and route.destination_location is not None:
            return route.destination_location, RouteType.CUSTOM.value.lower()
        if route.route_type == RouteType.RELAY and route.relay_site is not None:
            return _buffer_of(session, route.relay_site), RELAY
        return _buffer_of(session, route.destination_site), RouteType.DIRECT.value.lower()
    return _buffer_of(session, next_lta_site(session, source_site)), PRIMARY


def _has_copy_at(location_id_col):
    return exists().where(
        DataTransferPackagePhysicalCopy.data_transfer_package_id == DataTransferPackage.id,
        DataTransferPackagePhysicalCopy.data_location_id == location_id_col,
        DataTransferPackagePhysicalCopy.status == PhysicalCopyStatus.PRESENT,
    )


def plan_primary_transfers(
    session: Session, source_site: Site, *, run_id: str | None = None
) -> list[DataTransfer]:
    """A DataTransfer for every completed bundle at this site's buffers that has none yet.

    Called by the bundle sensor's plan and by every bundle run right after its bundle is built;
    the ``routing:<site id>`` planner lock makes them take turns, and "has none yet" is read
    inside it, so a bundle gets exactly one primary route.
    """
    with planner_lock(session, scope(ROUTING, source_site.id), run_id=run_id):
        buffers = select(DataLocation.id).where(DataLocation.site_id == source_site.id)
        any_transfer = exists().where(
            DataTransfer.data_transfer_package_id == DataTransferPackage.id
        )
        ready = session.scalars(
            select(DataTransferPackage)
            .where(
                DataTransferPackage.status == Status.COMPLETED,
                DataTransferPackage.origin_location_id.in_(buffers),
                _has_copy_at(DataTransferPackage.origin_location_id),
                ~any_transfer,
            )
            .order_by(DataTransferPackage.id)
        ).all()
        created = []
        for dtp in ready:
            destination, kind = primary_destination(session, source_site)
            created.append(
                _new_transfer(session, dtp, dtp.origin_location, destination, kind, run_id)
            )
        session.commit()
    return created


def plan_secondary_transfers(session: Session, *, run_id: str | None = None) -> list[DataTransfer]:
    """LTA -> LTA: once a bundle is unpacked at one LTA site, send it to every other LTA site.

    The origin is the buffer it arrived at by its primary (relay, direct, custom) route, or,
    when that copy is gone, one a secondary route filled: an LTA site that joins while the
    bundle still waits in some buffer gets it too (and that buffer's copy may then go by its
    deletion rule, which waits for every active LTA site).

    Every site's transfer sensor runs this; they take turns on the ``routing:secondary``
    planner lock (shared with relay routes, which may target the same buffer), and the
    (bundle, destination) unique constraint backs it up.
    """
    with planner_lock(session, SECONDARY_SCOPE, run_id=run_id):
        return _plan_secondary_transfers(session, run_id)


def _plan_secondary_transfers(session: Session, run_id: str | None) -> list[DataTransfer]:
    sites = lta_sites(session)
    created = []
    arrived = aliased(DataTransfer)
    dest = aliased(DataLocation)
    rows = session.execute(
        select(DataTransferPackage, dest)
        .join(arrived, arrived.data_transfer_package_id == DataTransferPackage.id)
        .join(dest, dest.id == arrived.destination_location_id)
        .where(
            arrived.status == Status.COMPLETED,
            arrived.unpack_status == Status.COMPLETED,
            _has_copy_at(arrived.destination_location_id),
        )
        # forwarded from where it arrived by its own route; from a buffer a secondary route
        # filled only when that copy is gone (an LTA site that joined after it was deleted)
        .order_by(DataTransferPackage.id, case((arrived.route_kind == SECONDARY, 1), else_=0))
    ).all()
    # the sites each bundle's transfers reach, for all bundles in one statement (one per
    # bundle made a tick at 10k bundles cost ~10k statements, even with nothing to plan)
    reached: dict[int, set[int]] = defaultdict(set)
    for chunk in chunks(sorted({dtp.id for dtp, _ in rows})):
        for dtp_id, site_id in session.execute(
            select(DataTransfer.data_transfer_package_id, DataLocation.site_id)
            .join(DataLocation, DataTransfer.destination_location_id == DataLocation.id)
            .where(DataTransfer.data_transfer_package_id.in_(chunk))
        ):
            reached[dtp_id].add(site_id)
    buffers: dict[int, DataLocation] = {}
    for dtp, origin in rows:
        for site in sites:
            if site.id in reached[dtp.id] or site.id == origin.site_id:
                continue
            if site.id not in buffers:
                buffers[site.id] = _buffer_of(session, site)
            created.append(_new_transfer(session, dtp, origin, buffers[site.id], SECONDARY, run_id))
            reached[dtp.id].add(site.id)
    session.commit()
    return created


def plan_relay_onward_transfers(
    session: Session, *, run_id: str | None = None
) -> list[DataTransfer]:
    """RELAY routes: a bundle that arrived at the relay site goes on to the route's destination.

    Under the ``routing:secondary`` planner lock, like secondary routes (see there)."""
    with planner_lock(session, SECONDARY_SCOPE, run_id=run_id):
        return _plan_relay_onward_transfers(session, run_id)


def _plan_relay_onward_transfers(session: Session, run_id: str | None) -> list[DataTransfer]:
    # Only the hops not yet sent on from the relay buffer: the scan ends with each hop's onward
    # transfer instead of growing with the history of every bundle ever relayed.
    onward = aliased(DataTransfer)
    hops = session.scalars(
        select(DataTransfer)
        .where(
            DataTransfer.route_kind == RELAY,
            DataTransfer.status == Status.COMPLETED,
            ~exists().where(
                onward.data_transfer_package_id == DataTransfer.data_transfer_package_id,
                onward.origin_location_id == DataTransfer.destination_location_id,
            ),
        )
        .order_by(DataTransfer.id)
    ).all()
    created = []
    for hop in hops:
        dtp, relay = hop.data_transfer_package, hop.destination_location
        site = _onward_site(session, dtp.origin_location.site, relay)
        if site is None:
            continue
        destination = _buffer_of(session, site)
        already = session.scalar(
            select(DataTransfer.id).where(
                DataTransfer.data_transfer_package_id == dtp.id,
                DataTransfer.destination_location_id == destination.id,
            )
        )
        if already is None:
            created.append(_new_transfer(session, dtp, relay, destination, PRIMARY, run_id))
    session.commit()
    return created


def _onward_site(session: Session, origin: Site, relay: DataLocation) -> Site | None:
    """Where a bundle relayed to ``relay`` goes on to: the destination of the origin's route;
    with the route gone meanwhile, the next LTA site round-robin -- or nowhere from an LTA
    relay site, whose secondary routes forward what it unpacked."""
    route = _custom_route(session, origin)
    if route is not None and route.destination_site_id != relay.site_id:
        return route.destination_site
    if is_lta_site(relay.site):
        return None
    return next_lta_site(session, origin)


def _new_transfer(
    session: Session,
    dtp: DataTransferPackage,
    origin: DataLocation,
    destination: DataLocation,
    kind: str,
    run_id: str | None,
) -> DataTransfer:
    transfer = DataTransfer(
        data_transfer_package_id=dtp.id,
        origin_location_id=origin.id,
        destination_location_id=destination.id,
        route_kind=kind,
        status=Status.PENDING,
        unpack_status=Status.PENDING,
    )
    session.add(transfer)
    session.flush()
    audit(
        session,
        entity_type="data_transfer",
        entity_id=transfer.id,
        new_status=Status.PENDING,
        reason=f"{kind} route {origin.qualified_name} -> {destination.qualified_name}",
        data_location_id=destination.id,
        run_id=run_id,
    )
    return transfer
