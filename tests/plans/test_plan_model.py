"""flags.plans.model: parsing with named fields, guard arithmetic, and the pure state machine."""

from __future__ import annotations

import copy
import subprocess
import sys
import types
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import flags.plans as package
from flags.errors import InvalidRuleError, PlanStateError, ValidationError
from flags.model import StateChange
from flags.plans.model import (
    ApplyStage,
    Complete,
    Guard,
    Observation,
    Plan,
    PlanKind,
    PlanStatus,
    RollBack,
    Stop,
    Wait,
    abort,
    advance,
    format_duration,
    guard_since,
    measure,
    next_action,
    parse_plan,
    parse_schedule,
    pause,
    resume,
    spec_to_dict,
)

T0 = datetime(2026, 11, 5, 10, 0, tzinfo=UTC)
PLAN_BODY: dict[str, Any] = {
    "environment": "production",
    "stages": [
        {"tenants_on": ["internal"], "enabled": True, "hold": "30m"},
        {"rollout": 5, "hold": "30m"},
        {"rollout": 25, "hold": "2h"},
        {"rollout": 100},
    ],
    "guards": [{"metric": "auth.cache.l2.corrupt_rate", "max": 0.01}],
}
PLAN_YAML = """
environment: production
start_at: 2026-12-01T02:00:00Z
stages:
  - {tenants_on: [internal], enabled: true, hold: 30m}
  - {rollout: 5, hold: 30m}
  - {rollout: 100, hold: 1h}
guards:
  - {metric: auth.cache.l2.corrupt_rate, max: 0.01, window: 10m}
  - {metric: auth.cache.l2.errors, max: 50}
"""


def body_with(path: str, value: Any) -> dict[str, Any]:
    """PLAN_BODY with ``path`` (``stages.1.hold``) set to ``value`` (``...`` deletes it)."""
    body = copy.deepcopy(PLAN_BODY)
    *parents, last = path.split(".")
    target: Any = body
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    key: Any = int(last) if last.isdigit() else last
    if value is ...:
        del target[key]
    else:
        target[key] = value
    return body


def make_plan(**overrides: Any) -> Plan:
    spec = parse_plan(PLAN_BODY)
    values: dict[str, Any] = {
        "id": 7,
        "kind": PlanKind.PLAN,
        "flag": "auth.cache.l2",
        "environment": "production",
        "stages": spec.stages,
        "guards": spec.guards,
        "status": PlanStatus.RUNNING,
        "stage": 1,
        "stage_started_at": T0,
        "start_at": None,
        "created_at": T0 - timedelta(hours=1),
        "created_by": "alice",
        "updated_at": T0,
    }
    values.update(overrides)
    return Plan(**values)


class TestParsePlan:
    def test_parse_plan__issue_example__round_trips_through_body_form(self) -> None:
        """The body form a spec prints is read back as the same spec."""
        # When
        spec = parse_plan(PLAN_BODY)
        # Then
        assert [s.change.rollout for s in spec.stages] == [None, 5, 25, 100]
        assert spec.stages[0].change.tenants_on_add == {"internal"}
        assert spec.stages[0].change.tenants_on is None  # an addition, not a replacement
        assert spec.stages[2].hold == timedelta(hours=2)
        assert spec.stages[3].hold == timedelta(0)  # the last stage's hold defaults to 0
        assert parse_plan(spec_to_dict(spec)) == spec

    def test_parse_plan__yaml_file__reads_dates_durations_and_windows(self) -> None:
        """A plan written as YAML (where dates arrive as datetimes) parses."""
        spec = parse_plan(yaml.safe_load(PLAN_YAML))
        assert spec.start_at == datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
        assert spec.guards[0].window == timedelta(minutes=10)
        assert spec.guards[1].counters == ("errors", None)
        assert parse_plan(spec_to_dict(spec)) == spec

    @pytest.mark.parametrize(
        ("path", "value", "field"),
        [
            ("stages", ..., "stages"),
            ("stages", [], "stages"),
            ("stages", "fast", "stages"),
            ("stages.1.hold", "-5m", "stages.1.hold"),
            ("stages.1.hold", -300, "stages.1.hold"),
            ("stages.1.hold", "soon", "stages.1.hold"),
            ("stages.1.hold", ..., "stages.1.hold"),
            ("stages.2.rollout", 3, "stages.2.rollout"),
            ("stages.1.rollout", 101, "stages.1.rollout"),
            ("stages.1.rollout", "5", "stages.1.rollout"),
            ("stages.0.enabled", "yes", "stages.0.enabled"),
            ("stages.0.tenants_on", ["ok", ""], "stages.0.tenants_on"),
            ("stages.1.rolout", 5, "stages.1.rolout"),
            ("stages.3", {"hold": "1m"}, "stages.3"),
            ("stages.3", 100, "stages.3"),
            ("environment", ..., "environment"),
            ("environment", "Prod!", "environment"),
            ("guards.0.metric", "nodot", "guards.0.metric"),
            ("guards.0.metric", "auth.cache.l2.Bad-Name", "guards.0.metric"),
            ("guards.0.max", -1, "guards.0.max"),
            ("guards.0.max", "0.01", "guards.0.max"),
            ("guards.0.max", ..., "guards.0.max"),
            ("guards.0.window", "-1m", "guards.0.window"),
            ("start_at", "next tuesday", "start_at"),
            ("start_at", "10m", "start_at"),
            ("owner", "bob", "owner"),
        ],
    )
    def test_parse_plan__bad_field__raises_naming_it(
        self, path: str, value: Any, field: str
    ) -> None:
        """Every bad part of a plan body is refused with its own dotted field name."""
        with pytest.raises(ValidationError) as info:
            parse_plan(body_with(path, value))
        assert info.value.field == field

    def test_parse_plan__rollout_going_down__is_an_invalid_rule(self) -> None:
        """A plan only moves up: 25 then 5 is refused at the stage that goes down."""
        with pytest.raises(InvalidRuleError, match="goes down from 25 to 3") as info:
            parse_plan(body_with("stages.3.rollout", 3))
        assert info.value.field == "stages.3.rollout"

    def test_parse_plan__enabled_turned_off_later__is_an_invalid_rule(self) -> None:
        with pytest.raises(InvalidRuleError) as info:
            parse_plan(body_with("stages.2.enabled", False))
        assert info.value.field == "stages.2.enabled"

    def test_parse_plan__not_an_object__names_body(self) -> None:
        with pytest.raises(ValidationError) as info:
            parse_plan(["stages"])
        assert info.value.field == "body"


class TestParseSchedule:
    def test_parse_schedule__maintenance_window__is_one_stage_starting_at(self) -> None:
        spec = parse_schedule(
            {"environment": "production", "at": "2026-12-01T02:00:00Z", "change": {"rollout": 0}},
            now=T0,
        )
        assert spec.kind is PlanKind.SCHEDULE
        assert spec.start_at == datetime(2026, 12, 1, 2, tzinfo=UTC)
        assert spec.stages[0].change == StateChange(rollout=0)
        assert parse_schedule(spec_to_dict(spec)) == spec

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"environment": "production", "change": {"rollout": 1}}, "at"),
            ({"environment": "production", "at": "2026-11-05T09:00:00Z", "change": {}}, "at"),
            ({"environment": "production", "at": "2026-12-01T02:00:00Z"}, "change"),
            ({"environment": "production", "at": "2026-12-01T02:00:00Z", "change": {}}, "change"),
            (
                {"environment": "production", "at": "2026-12-01T02:00:00Z", "change": {"x": 1}},
                "change.x",
            ),
            (
                {
                    "environment": "production",
                    "at": "2026-12-01T02:00:00Z",
                    "change": {"rollout": -1},
                },
                "change.rollout",
            ),
        ],
    )
    def test_parse_schedule__bad_body__raises_naming_the_field(
        self, body: dict[str, Any], field: str
    ) -> None:
        """A missing or past ``at``, an empty or bad ``change``: each names its field."""
        with pytest.raises(ValidationError) as info:
            parse_schedule(body, now=T0)
        assert info.value.field == field


class TestGuards:
    @pytest.mark.parametrize(
        ("metric", "per", "counters"),
        [
            ("auth.cache.l2.corrupt_rate", None, ("corrupt_reads", "reads")),
            ("auth.cache.l2.mismatch_rate", None, ("mismatches", "reads")),
            ("auth.cache.l2.error_rate", None, ("errors", "reads")),
            ("checkout.declined_rate", None, ("declined", "reads")),
            ("checkout.declined_rate", "attempts", ("declined", "attempts")),
            ("auth.cache.l2.corrupt_reads", None, ("corrupt_reads", None)),
        ],
    )
    def test_guard_counters__metric_name__maps_to_numerator_and_denominator(
        self, metric: str, per: str | None, counters: tuple[str, str | None]
    ) -> None:
        assert Guard(metric, 0.01, per=per).counters == counters

    def test_measure__rate_above_max__breaches_with_values_in_description(self) -> None:
        reading = measure(
            Guard("auth.cache.l2.corrupt_rate", 0.01), {"reads": 100, "corrupt_reads": 3}, T0
        )
        assert reading.value == pytest.approx(0.03)
        assert reading.breached
        assert "0.03 (3 corrupt_reads / 100 reads) > max 0.01" in reading.describe()

    def test_measure__no_reads__has_no_value_and_never_breaches(self) -> None:
        reading = measure(Guard("auth.cache.l2.corrupt_rate", 0.0), {"corrupt_reads": 5}, T0)
        assert reading.value is None
        assert not reading.breached

    def test_measure__raw_count_at_max__does_not_breach(self) -> None:
        """The limit is inclusive: a breach is strictly above ``max``."""
        assert not measure(Guard("f.errors", 5), {"errors": 5}, T0).breached
        assert measure(Guard("f.errors", 5), {"errors": 6}, T0).breached

    def test_guard_since__window_or_hold__starts_where_documented(self) -> None:
        plan = make_plan(stage_started_at=T0)
        now = T0 + timedelta(hours=1)
        assert guard_since(plan, Guard("f.errors", 1), now) == T0
        assert guard_since(plan, Guard("f.errors", 1, window=timedelta(minutes=5)), now) == (
            now - timedelta(minutes=5)
        )


def breaching() -> Observation:
    reading = measure(
        Guard("auth.cache.l2.corrupt_rate", 0.01), {"reads": 200, "corrupt_reads": 10}, T0
    )
    return Observation(readings=(reading,))


class TestNextAction:
    def test_next_action__pending_before_start__waits_until_start(self) -> None:
        start = T0 + timedelta(hours=1)
        plan = make_plan(status=PlanStatus.PENDING, stage=None, start_at=start)
        assert next_action(plan, T0, Observation()) == Wait(start)

    def test_next_action__pending_at_start__applies_first_stage(self) -> None:
        plan = make_plan(status=PlanStatus.PENDING, stage=None, start_at=T0)
        step = next_action(plan, T0, Observation())
        assert isinstance(step, ApplyStage)
        assert (step.index, step.change.tenants_on_add) == (0, {"internal"})

    def test_next_action__hold_not_over__waits_for_its_end(self) -> None:
        plan = make_plan(stage=1)
        now = T0 + timedelta(minutes=29)
        assert next_action(plan, now, Observation()) == Wait(T0 + timedelta(minutes=30))

    def test_next_action__hold_over__applies_next_stage(self) -> None:
        plan = make_plan(stage=1)
        step = next_action(plan, T0 + timedelta(minutes=30), Observation())
        assert isinstance(step, ApplyStage)
        assert (step.index, step.change.rollout) == (2, 25)
        assert "plan 7: stages.2 rollout=25 (stage 3 of 4)" in step.reason

    def test_next_action__last_stage_held__completes(self) -> None:
        plan = make_plan(stage=3)
        assert isinstance(next_action(plan, T0, Observation()), Complete)

    def test_next_action__guard_breached__rolls_back_with_measured_values(self) -> None:
        """A breach wins over an elapsed hold: the plan never advances past it."""
        plan = make_plan(stage=2)
        step = next_action(plan, T0 + timedelta(hours=3), breaching())
        assert isinstance(step, RollBack)
        assert step.kill
        assert "10 corrupt_reads / 200 reads" in step.reason
        assert "stages.2 (rollout=25)" in step.reason

    def test_next_action__flag_killed_by_someone__rolls_back_without_killing_again(self) -> None:
        plan = make_plan()
        step = next_action(
            plan, T0, Observation(killed=True, killed_by="bob", kill_reason="401 storm")
        )
        assert isinstance(step, RollBack)
        assert not step.kill
        assert "killed in 'production' by bob: 401 storm" in step.reason

    @pytest.mark.parametrize(
        "status",
        [PlanStatus.PAUSED, PlanStatus.ROLLED_BACK, PlanStatus.COMPLETED, PlanStatus.ABORTED],
    )
    def test_next_action__not_active__waits_for_a_person(self, status: PlanStatus) -> None:
        plan = make_plan(status=status)
        assert next_action(plan, T0 + timedelta(days=9), breaching()) == Wait(None)

    def test_next_action__schedule_on_killed_flag__still_applies_at_its_time(self) -> None:
        spec = parse_schedule(
            {"environment": "production", "at": T0.isoformat(), "change": {"enabled": False}}
        )
        plan = make_plan(
            kind=PlanKind.SCHEDULE,
            stages=spec.stages,
            guards=(),
            status=PlanStatus.PENDING,
            stage=None,
            start_at=T0,
        )
        assert isinstance(next_action(plan, T0, Observation(killed=True)), ApplyStage)

    def test_next_action__flag_archived__stops(self) -> None:
        assert isinstance(next_action(make_plan(), T0, Observation(archived=True)), Stop)


class TestTransitions:
    def test_pause__completed_plan__raises_plan_state_error(self) -> None:
        with pytest.raises(PlanStateError):
            pause(make_plan(status=PlanStatus.COMPLETED), T0)

    def test_resume__rolled_back_while_killed__raises_until_unkilled(self) -> None:
        plan = make_plan(status=PlanStatus.ROLLED_BACK, reason="breach")
        with pytest.raises(PlanStateError, match="unkill it"):
            resume(plan, T0, killed=True)
        resumed = resume(plan, T0 + timedelta(hours=1), killed=False)
        assert resumed.status is PlanStatus.RUNNING
        assert resumed.stage_started_at == T0 + timedelta(hours=1)  # the hold starts again
        assert resumed.reason is None

    def test_resume__paused_before_first_stage__is_pending_again(self) -> None:
        plan = make_plan(status=PlanStatus.PAUSED, stage=None, stage_started_at=None)
        assert resume(plan, T0, killed=False).status is PlanStatus.PENDING

    def test_abort__final_plan__raises_and_otherwise_keeps_reason(self) -> None:
        with pytest.raises(PlanStateError):
            abort(make_plan(status=PlanStatus.ABORTED), T0, "again")
        aborted = abort(make_plan(status=PlanStatus.ROLLED_BACK), T0, "giving up")
        assert (aborted.status, aborted.reason) == (PlanStatus.ABORTED, "giving up")

    def test_advance__running_and_last__applies_next_or_completes(self) -> None:
        step = advance(make_plan(stage=1), "alice")
        assert isinstance(step, ApplyStage)
        assert step.index == 2
        assert "advanced by alice" in step.reason
        assert isinstance(advance(make_plan(stage=3), "alice"), Complete)

    def test_advance__rolled_back__raises(self) -> None:
        with pytest.raises(PlanStateError):
            advance(replace(make_plan(), status=PlanStatus.ROLLED_BACK), "alice")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(seconds=90), "90s"),
        (timedelta(minutes=30), "30m"),
        (timedelta(hours=2), "2h"),
        (timedelta(days=7), "1w"),
    ],
)
def test_format_duration__value__is_shortest_exact_form(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


def test_model__imported_alone__loads_no_database_or_web_code() -> None:
    """The plan core is pure: importing it pulls in no SQLAlchemy, FastAPI or Redis."""
    code = (
        "import sys, flags.plans.model; "
        "print(sorted(m for m in ('sqlalchemy', 'fastapi', 'redis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(
        ["30m", "-5m", "0s", "1e9w", "2026-12-01T02:00:00Z", "0001-01-01T00:00+14:00"]
    )
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
stage_like = st.fixed_dictionaries(
    {},
    optional={k: json_values for k in ("rollout", "tenants_on", "enabled", "hold", "x")},
)
guard_like = st.fixed_dictionaries(
    {}, optional={k: json_values for k in ("metric", "max", "window", "per")}
)
plan_like = st.fixed_dictionaries(
    {"environment": st.sampled_from(["production", "Prod", 1])},
    optional={
        "stages": st.lists(stage_like, max_size=4) | json_values,
        "guards": st.lists(guard_like, max_size=2) | json_values,
        "start_at": json_values,
    },
)
schedule_like = st.fixed_dictionaries(
    {},
    optional={
        "environment": st.just("production"),
        "at": json_values,
        "change": st.dictionaries(
            st.sampled_from(["enabled", "rollout", "tenants_on", "tenants_off_add", "y"]),
            json_values,
            max_size=3,
        )
        | json_values,
    },
)


@settings(max_examples=200, deadline=None)
@given(body=plan_like | json_values)
def test_parse_plan__any_json__returns_a_spec_or_raises_validation_error(body: Any) -> None:
    """Whatever arrives, parsing answers a spec or a ``ValidationError`` naming a field:
    never another exception (which the API would turn into a 500)."""
    try:
        spec = parse_plan(body)
    except ValidationError as exc:
        assert exc.field
    else:
        assert parse_plan(spec_to_dict(spec)) == spec


@settings(max_examples=200, deadline=None)
@given(body=schedule_like | json_values)
def test_parse_schedule__any_json__returns_a_spec_or_raises_validation_error(body: Any) -> None:
    try:
        spec = parse_schedule(body, now=T0)
    except ValidationError as exc:
        assert exc.field
    else:
        assert parse_schedule(spec_to_dict(spec)) == spec


def test_plans_package__all__is_sorted_and_lists_its_public_names() -> None:
    assert package.__all__ == sorted(package.__all__)
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(package.__all__) == public
