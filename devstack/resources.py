"""Create the table, bucket and queues that template.yaml declares, through boto3.

template.yaml is the single source of truth for storage shape: the local stack and the
tests read the Table, Bucket, TrainingQueue and TrainingDeadLetterQueue resources from it
(CloudFormation short-form tags such as !Ref/!GetAtt/!Sub are accepted) and create them with
those properties against whatever endpoint the session points at (moto server locally).
Idempotent: resources that already exist are reused.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

_SHORT_TAGS = (
    "Ref", "GetAtt", "Sub", "Join", "Select", "Split", "If", "Equals", "Not", "And", "Or",
    "FindInMap", "ImportValue", "GetAZs", "Base64", "Cidr", "Condition", "Transform",
)  # fmt: skip


def load_template(path: str | Path) -> dict[str, Any]:
    """Parse a CloudFormation/SAM YAML template; short-form tags become their long form
    (``!GetAtt A.Arn`` -> ``{"Fn::GetAtt": ["A", "Arn"]}``)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct(tag: str):
        def fn(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
            if isinstance(node, yaml.ScalarNode):
                value: Any = loader.construct_scalar(node)
                if tag == "GetAtt":
                    value = value.split(".", 1)
            elif isinstance(node, yaml.SequenceNode):
                value = loader.construct_sequence(node, deep=True)
            else:
                value = loader.construct_mapping(node, deep=True)
            name = "Ref" if tag == "Ref" else ("Condition" if tag == "Condition" else f"Fn::{tag}")
            return {name: value}

        return fn

    for tag in _SHORT_TAGS:
        Loader.add_constructor(f"!{tag}", construct(tag))
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=Loader)  # noqa: S506 - SafeLoader subclass


def _session(session_or_endpoint: Any) -> tuple[Any, str | None]:
    import boto3

    if isinstance(session_or_endpoint, str):
        return boto3.session.Session(), session_or_endpoint
    return session_or_endpoint or boto3.session.Session(), None


def _client(session: Any, service: str, endpoint: str | None) -> Any:
    return session.client(service, endpoint_url=endpoint) if endpoint else session.client(service)


def _create_table(ddb: Any, name: str, props: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if props.get("GlobalSecondaryIndexes"):
        args["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    if props.get("SSESpecification", {}).get("SSEEnabled"):
        args["SSESpecification"] = {"Enabled": True}
    with contextlib.suppress(ddb.exceptions.ResourceInUseException):  # reuse existing
        ddb.create_table(**args)
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        current = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            ddb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
    pitr = props.get("PointInTimeRecoverySpecification", {})
    if pitr.get("PointInTimeRecoveryEnabled"):
        # Not every emulator implements continuous backups; the table works without them.
        with contextlib.suppress(Exception):
            ddb.update_continuous_backups(
                TableName=name,
                PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
            )


def _create_bucket(s3: Any, name: str, props: dict[str, Any], region: str | None) -> None:
    try:
        if region and region != "us-east-1":
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
        else:
            s3.create_bucket(Bucket=name)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    status = props.get("VersioningConfiguration", {}).get("Status")
    if status:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": status})
    enc = props.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration")
    if enc:
        # CloudFormation spells the rule key differently from the S3 API.
        rules = [
            {
                "ApplyServerSideEncryptionByDefault": r["ServerSideEncryptionByDefault"],
                **({"BucketKeyEnabled": r["BucketKeyEnabled"]} if "BucketKeyEnabled" in r else {}),
            }
            for r in enc
        ]
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
    pab = props.get("PublicAccessBlockConfiguration")
    if pab:
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=pab)


def _queue_attributes(props: dict[str, Any], arns: dict[str, str]) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for key, value in props.items():
        if key in ("QueueName", "Tags"):
            continue
        if key == "RedrivePolicy":
            policy = dict(value)
            target = policy.get("deadLetterTargetArn")
            if isinstance(target, dict) and "Fn::GetAtt" in target:
                policy["deadLetterTargetArn"] = arns[target["Fn::GetAtt"][0]]
            attrs[key] = json.dumps(policy)
        elif isinstance(value, bool):
            attrs[key] = "true" if value else "false"
        else:
            attrs[key] = str(value)
    return attrs


def _create_queue(sqs: Any, name: str, attrs: dict[str, str]) -> tuple[str, str]:
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
    except sqs.exceptions.QueueDoesNotExist:
        url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return url, arn


def create_resources(
    template_path: str | Path, session_or_endpoint: Any = None, name_prefix: str = "lora"
) -> dict[str, str]:
    """Create (or reuse) the storage resources of ``template_path``.

    ``session_or_endpoint``: a boto3 Session, an endpoint URL string, or None (a default
    session, which honours AWS_ENDPOINT_URL). Returns table_name, bucket_name, queue_url,
    dlq_url.
    """
    resources = load_template(template_path)["Resources"]
    session, endpoint = _session(session_or_endpoint)
    region = session.region_name
    table = f"{name_prefix}-table"
    bucket = f"{name_prefix}-bucket"
    _create_table(_client(session, "dynamodb", endpoint), table, resources["Table"]["Properties"])
    _create_bucket(
        _client(session, "s3", endpoint), bucket, resources["Bucket"]["Properties"], region
    )
    sqs = _client(session, "sqs", endpoint)
    arns: dict[str, str] = {}
    dlq_url, arns["TrainingDeadLetterQueue"] = _create_queue(
        sqs,
        f"{name_prefix}-training-dlq",
        _queue_attributes(resources["TrainingDeadLetterQueue"].get("Properties", {}), arns),
    )
    queue_url, arns["TrainingQueue"] = _create_queue(
        sqs,
        f"{name_prefix}-training",
        _queue_attributes(resources["TrainingQueue"].get("Properties", {}), arns),
    )
    return {"table_name": table, "bucket_name": bucket, "queue_url": queue_url, "dlq_url": dlq_url}
