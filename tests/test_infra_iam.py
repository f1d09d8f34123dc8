"""The S3 policies in infra/iam keep each tenant of a shared bucket to tenants/{tenant}/.

No AWS here: the JSON is read as it is and a small evaluator, written for these two
files, applies IAM's matching rules (wildcards, policy variables, explicit deny wins,
default deny) to a few requests. It understands only the condition operators these files
use and fails on any other, so a change to the policies cannot pass unexamined.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import pytest

IAM = Path(__file__).resolve().parent.parent / "infra" / "iam"
TAG = "${aws:PrincipalTag/tenant}"
BUCKET_ARN = "arn:aws:s3:::BUCKET"
OWN_PREFIX_ARN = f"{BUCKET_ARN}/tenants/{TAG}/*"
PLATFORM = "arn:aws:iam::ACCOUNT:role/farm-platform"

# Something a careless admin might also attach to the role (AmazonS3FullAccess): the
# denies must hold against it, not only against this file's own allows.
S3_FULL_ACCESS: dict[str, Any] = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}

Statement = dict[str, Any]
Context = dict[str, Any]


def load(name: str) -> dict[str, Any]:
    return json.loads((IAM / name).read_text())


def statements(policy: dict[str, Any]) -> list[Statement]:
    found = policy["Statement"]
    return found if isinstance(found, list) else [found]


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def iam_match(pattern: str, value: str, *, case: bool = True) -> bool:
    """IAM wildcard match: `*` is any run of characters ("/" included), `?` one character.

    fnmatch agrees on both, but also reads `[...]` as a character class, which IAM does
    not: escaping `[` keeps a literal bracket literal.
    """
    pattern = pattern.replace("[", "[[]")
    if not case:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern)


def substitute(text: str, context: Context) -> str | None:
    """Fill in ${aws:PrincipalTag/tenant}; None when the tag is absent.

    IAM treats an element whose variable cannot be resolved as not matching, so the caller
    skips such a statement (the Null deny is what stops an untagged session).
    """
    if TAG not in text:
        return text
    tenant = context.get("aws:PrincipalTag/tenant")
    return None if tenant is None else text.replace(TAG, tenant)


def condition_holds(operator: str, key: str, expected: str | list[str], context: Context) -> bool:
    wanted = [substitute(value, context) for value in as_list(expected)]
    actual = context.get(key)
    if operator == "Null":
        # "true": the key must be absent; "false": it must be present.
        return (actual is None) == (wanted[0] == "true")
    if operator.startswith("ForAllValues:"):
        # True for an absent or empty set, which is why the trust policy also needs a
        # condition that the tenant tag is there.
        inner = operator.removeprefix("ForAllValues:")
        return all(condition_holds(inner, key, expected, {key: item}) for item in actual or [])
    patterns = [value for value in wanted if value is not None]
    if operator == "StringLike":
        return actual is not None and any(iam_match(p, actual) for p in patterns)
    if operator == "StringNotLike":
        # A negated operator matches when the key is absent: a listing without a prefix
        # is "not like" the tenant's prefix, and is denied.
        return actual is None or not any(iam_match(p, actual) for p in patterns)
    if operator == "StringEquals":
        return actual is not None and actual in patterns
    raise AssertionError(f"the test's evaluator does not know {operator}: extend it first")


def statement_applies(stmt: Statement, action: str, resource: str, context: Context) -> bool:
    actions = as_list(stmt.get("Action", []))
    if not any(iam_match(pattern, action, case=False) for pattern in actions):
        return False
    if "Resource" in stmt or "NotResource" in stmt:
        negated = "NotResource" in stmt
        listed = as_list(stmt["NotResource"] if negated else stmt["Resource"])
        patterns = [substitute(p, context) for p in listed]
        if None in patterns:
            return False
        hit = any(iam_match(p, resource) for p in patterns if p is not None)
        if hit == negated:
            return False
    conditions = stmt.get("Condition", {})
    return all(
        condition_holds(operator, key, expected, context)
        for operator, keys in conditions.items()
        for key, expected in keys.items()
    )


def decide(policy: list[Statement], action: str, resource: str, context: Context) -> bool:
    """Allowed: some statement allows it and none denies it (explicit deny wins)."""
    applying = [s for s in policy if statement_applies(s, action, resource, context)]
    if any(s["Effect"] == "Deny" for s in applying):
        return False
    return any(s["Effect"] == "Allow" for s in applying)


def tenant_policy() -> list[Statement]:
    return statements(load("tenant-policy.json"))


def s3_request(
    action: str,
    key: str | None,
    tenant: str | None,
    *,
    prefix: str | None = None,
    also: tuple[Statement, ...] = (),
    policy: list[Statement] | None = None,
) -> bool:
    """One S3 request by a session tagged tenant=TENANT, on BUCKET or its object KEY."""
    attached = (tenant_policy() if policy is None else policy) + list(also)
    resource = BUCKET_ARN if key is None else f"{BUCKET_ARN}/{key}"
    context: Context = {"aws:PrincipalTag/tenant": tenant, "s3:prefix": prefix}
    return decide(attached, action, resource, context)


def allowed_by_resource(tenant: str, key: str, policy: list[Statement] | None = None) -> bool:
    """Is KEY inside some object Allow's Resource once TENANT is filled in?

    The Allows alone, without the denies: each guard has to hold by itself.
    """
    for stmt in tenant_policy() if policy is None else policy:
        if stmt["Effect"] != "Allow" or "Resource" not in stmt:
            continue
        for pattern in as_list(stmt["Resource"]):
            if pattern.startswith(f"{BUCKET_ARN}/") and iam_match(
                pattern.replace(TAG, tenant), f"{BUCKET_ARN}/{key}"
            ):
                return True
    return False


def assume(
    tags: dict[str, str], *, principal: str = PLATFORM, transitive: tuple[str, ...] = ()
) -> bool:
    """farm-platform (or PRINCIPAL) calls AssumeRole with these session tags."""
    trust = statements(load("tenant-role-trust.json"))
    context: Context = {f"aws:RequestTag/{k}": v for k, v in tags.items()}
    context["aws:TagKeys"] = list(tags)
    context["sts:TransitiveTagKeys"] = list(transitive)
    # Passing tags is authorized as sts:TagSession besides sts:AssumeRole: both must pass.
    actions = ["sts:AssumeRole"] + (["sts:TagSession"] if tags else [])
    for action in actions:
        trusted = [s for s in trust if principal in as_list(s["Principal"]["AWS"])]
        if not decide(trusted, action, "*", context):
            return False
    return True


# --- the files themselves -------------------------------------------------------------


@pytest.mark.parametrize("name", ["tenant-policy.json", "tenant-role-trust.json"])
def test_policy_files_are_json_with_the_current_policy_language(name: str) -> None:
    policy = load(name)
    assert policy["Version"] == "2012-10-17"
    assert statements(policy)
    for stmt in statements(policy):
        assert stmt["Effect"] in ("Allow", "Deny")


def test_every_object_allow_is_confined_to_the_tenant_prefix() -> None:
    for stmt in statements(load("tenant-policy.json")):
        if stmt["Effect"] != "Allow":
            continue
        # NotResource in an Allow grants everything outside a list: never for a tenant.
        assert "NotResource" not in stmt
        for resource in as_list(stmt["Resource"]):
            assert resource in (BUCKET_ARN, OWN_PREFIX_ARN), resource
            if resource == BUCKET_ARN:
                # The bucket ARN is only for listing, which the next test pins down.
                assert as_list(stmt["Action"]) == ["s3:ListBucket"]


def test_listing_is_conditioned_on_the_tenant_prefix() -> None:
    lists = [
        s
        for s in statements(load("tenant-policy.json"))
        if s["Effect"] == "Allow" and "s3:ListBucket" in as_list(s["Action"])
    ]
    assert len(lists) == 1
    assert lists[0]["Resource"] == BUCKET_ARN
    assert lists[0]["Condition"] == {
        "StringLike": {"s3:prefix": [f"tenants/{TAG}/", f"tenants/{TAG}/*"]}
    }


def test_an_untagged_session_is_denied_everything() -> None:
    untagged = [
        s
        for s in statements(load("tenant-policy.json"))
        if s["Effect"] == "Deny"
        and s.get("Condition") == {"Null": {"aws:PrincipalTag/tenant": "true"}}
    ]
    assert len(untagged) == 1
    assert untagged[0]["Action"] == "*" and untagged[0]["Resource"] == "*"


def test_trust_policy_requires_the_tenant_tag_and_allows_tagging() -> None:
    (stmt,) = statements(load("tenant-role-trust.json"))
    assert stmt["Effect"] == "Allow"
    assert stmt["Principal"] == {"AWS": PLATFORM}
    assert set(as_list(stmt["Action"])) == {"sts:AssumeRole", "sts:TagSession"}
    conditions = stmt["Condition"]
    assert conditions["StringLike"] == {"aws:RequestTag/tenant": "?*"}
    assert conditions["ForAllValues:StringEquals"]["aws:TagKeys"] == ["tenant"]


# --- what the policies decide ---------------------------------------------------------


def test_the_allow_pattern_matches_only_the_tenants_own_keys() -> None:
    assert allowed_by_resource("acme", "tenants/acme/job/images/x.png")
    assert not allowed_by_resource("acme", "tenants/globex/job/images/x.png")
    # The "/" after the tenant name is what keeps acme out of acme2's folder.
    assert not allowed_by_resource("acme", "tenants/acme2/x")
    assert not allowed_by_resource("acme", "tenants/acme")
    assert not allowed_by_resource("acme", "models/base.safetensors")


@pytest.mark.parametrize(
    "action", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
)
def test_a_tenant_reaches_its_own_objects_and_no_one_elses(action: str) -> None:
    assert s3_request(action, "tenants/acme/job/images/x.png", "acme")
    assert s3_request(action, "tenants/acme/.farm-write-check", "acme")
    for key in ("tenants/globex/job/images/x.png", "tenants/acme2/x", "tenants/x.png"):
        assert not s3_request(action, key, "acme"), key
        # The denies hold even when another policy on the role grants all of S3.
        assert not s3_request(action, key, "acme", also=(S3_FULL_ACCESS,)), key


def test_a_tenant_lists_only_under_its_own_prefix() -> None:
    assert s3_request("s3:ListBucket", None, "acme", prefix="tenants/acme/")
    assert s3_request("s3:ListBucket", None, "acme", prefix="tenants/acme/job/images/")
    for prefix in ("tenants/globex/", "tenants/acme2/", "tenants/", "tenants/acme", "", None):
        assert not s3_request("s3:ListBucket", None, "acme", prefix=prefix), prefix
        broad = (S3_FULL_ACCESS,)
        assert not s3_request("s3:ListBucket", None, "acme", prefix=prefix, also=broad), prefix


def test_an_untagged_session_gets_nothing_even_with_a_broad_grant() -> None:
    broad = (S3_FULL_ACCESS,)
    assert not s3_request("s3:GetObject", "tenants/acme/job/images/x.png", None, also=broad)
    assert not s3_request("s3:ListBucket", None, None, prefix="tenants/acme/", also=broad)


def widened(policy: list[Statement], sid: str, field: str) -> list[Statement]:
    """POLICY with statement SID's FIELD opened from the tenant's prefix to all tenants."""
    copy = json.loads(json.dumps(policy))
    (stmt,) = [s for s in copy if s.get("Sid") == sid]
    assert stmt[field] == OWN_PREFIX_ARN
    stmt[field] = f"{BUCKET_ARN}/tenants/*"
    return copy


def test_the_checks_catch_a_policy_widened_to_all_tenants() -> None:
    """Not vacuous: opening either guard to tenants/* lets acme into globex's folder."""
    globex = "tenants/globex/job/images/x.png"
    allow = widened(tenant_policy(), "ReadWriteOwnTenantObjects", "Resource")
    assert allowed_by_resource("acme", globex, allow)
    deny = widened(tenant_policy(), "DenyObjectsOutsideOwnTenantPrefix", "NotResource")
    assert s3_request("s3:GetObject", globex, "acme", also=(S3_FULL_ACCESS,), policy=deny)


def test_only_the_platform_assumes_the_role_and_only_with_one_tenant_tag() -> None:
    assert assume({"tenant": "acme"})
    assert assume({"tenant": "acme"}, transitive=("tenant",))
    assert not assume({})
    assert not assume({"tenant": ""})
    assert not assume({"tenant": "acme", "team": "x"})
    assert not assume({"tenant": "acme"}, transitive=("team",))
    # A "/" would put the session inside another tenant's folder: tenants/globex/secret/.
    assert not assume({"tenant": "globex/secret"})
    assert not assume({"tenant": "acme"}, principal="arn:aws:iam::ACCOUNT:role/other")
