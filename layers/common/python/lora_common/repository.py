"""DynamoDB repository: the only module (with blobs.py and jobqueue.py) that touches boto3.

One table, keys from ``lora_common.keys``. Rules are enforced with conditional writes and
transactions; ``ClientError`` is turned into domain errors here.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from lora_common import keys
from lora_common.errors import Conflict, NotFound, ServiceUnavailable
from lora_common.util import iso, version_number

_CONDITION_FAILED = "ConditionalCheckFailedException"


def _to_ddb_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_ddb_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_ddb_value(v) for v in value]
    return value


def _from_ddb_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_ddb_value(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return [_from_ddb_value(v) for v in value]
    return value


def strip_keys(item: dict[str, Any] | None) -> dict[str, Any] | None:
    """Item without its table/index key attributes."""
    if item is None:
        return None
    return {
        k: v
        for k, v in item.items()
        if k not in ("pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk")
    }


class DynamoRepository:
    """Every read and write of the table. ``client`` is a boto3 DynamoDB client."""

    def __init__(self, table_name: str, client: Any = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("dynamodb")
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self.table = table_name
        self.client = client
        self._ser = TypeSerializer()
        self._de = TypeDeserializer()

    # --- plumbing ---------------------------------------------------------------------

    def _s(self, item: dict[str, Any]) -> dict[str, Any]:
        return {k: self._ser.serialize(_to_ddb_value(v)) for k, v in item.items()}

    def _d(self, item: dict[str, Any]) -> dict[str, Any]:
        return {k: _from_ddb_value(self._de.deserialize(v)) for k, v in item.items()}

    def _vals(self, values: dict[str, Any]) -> dict[str, Any]:
        return {k: self._ser.serialize(_to_ddb_value(v)) for k, v in values.items()}

    def _call(self, op: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in (_CONDITION_FAILED, "TransactionCanceledException"):
                raise
            raise ServiceUnavailable(
                "Storage unavailable", f"DynamoDB {op} failed ({code or 'error'})"
            ) from exc
        except BotoCoreError as exc:
            raise ServiceUnavailable("Storage unavailable", f"DynamoDB {op} failed") from exc

    @staticmethod
    def _is_condition_failure(exc: Exception) -> bool:
        response = getattr(exc, "response", {}) or {}
        code = response.get("Error", {}).get("Code", "")
        if code == _CONDITION_FAILED:
            return True
        if code == "TransactionCanceledException":
            reasons = response.get("CancellationReasons") or []
            codes = {r.get("Code") for r in reasons}
            # TransactionConflict: another transaction on the same items won the race (for
            # example two creates of one adapter_id) - the same outcome as a failed condition.
            return bool(codes & {"ConditionalCheckFailed", "TransactionConflict"}) or not reasons
        return False

    def _get(self, key: dict[str, str], consistent: bool = True) -> dict[str, Any] | None:
        resp = self._call(
            "get_item", TableName=self.table, Key=self._s(key), ConsistentRead=consistent
        )
        item = resp.get("Item")
        return strip_keys(self._d(item)) if item else None

    def _put_new(self, item: dict[str, Any], conflict: Conflict) -> None:
        from botocore.exceptions import ClientError

        try:
            self._call(
                "put_item",
                TableName=self.table,
                Item=self._s(item),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if self._is_condition_failure(exc):
                raise conflict from None
            raise

    def _query_all(self, **kwargs: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = None
        while True:
            args = dict(TableName=self.table, **kwargs)
            if start:
                args["ExclusiveStartKey"] = start
            resp = self._call("query", **args)
            out += [self._d(i) for i in resp.get("Items", [])]
            start = resp.get("LastEvaluatedKey")
            if not start:
                return out

    def _query_index(self, index: str, pk_name: str, pk_value: str) -> list[dict[str, Any]]:
        items = self._query_all(
            IndexName=index,
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": pk_name},
            ExpressionAttributeValues=self._vals({":p": pk_value}),
        )
        return [strip_keys(i) for i in items]  # type: ignore[misc]

    def _transact(self, items: list[dict[str, Any]], conflict: Exception) -> None:
        from botocore.exceptions import ClientError

        try:
            self._call("transact_write_items", TransactItems=items)
        except ClientError as exc:
            if self._is_condition_failure(exc):
                raise conflict from None
            raise ServiceUnavailable("Storage unavailable", "DynamoDB transaction failed") from exc

    def _update_existing(self, key: dict[str, str], sets: dict[str, Any], missing: Exception):
        """SET ``sets`` on an item that must exist; raise ``missing`` when it does not."""
        from botocore.exceptions import ClientError

        expr, names, values = self._update_expr(sets)
        try:
            self._call(
                "update_item",
                TableName=self.table,
                Key=self._s(key),
                UpdateExpression=expr,
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=self._vals(values),
            )
        except ClientError as exc:
            if self._is_condition_failure(exc):
                raise missing from None
            raise

    def _tx_put_new(self, item: dict[str, Any]) -> dict[str, Any]:
        """One Put entry of a TransactWriteItems call, for an item that must not exist yet."""
        return {
            "Put": {
                "TableName": self.table,
                "Item": self._s(item),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }

    def _tx_update(
        self,
        key: dict[str, str],
        expr: str,
        names: dict[str, str],
        values: dict[str, Any],
        condition: str | None = None,
    ) -> dict[str, Any]:
        """One Update entry of a TransactWriteItems call."""
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": self._s(key),
            "UpdateExpression": expr,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": self._vals(values),
        }
        if condition:
            update["ConditionExpression"] = condition
        return {"Update": update}

    def _update_expr(
        self, sets: dict[str, Any], removes: tuple[str, ...] = ()
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        names, values, parts = {}, {}, []
        for i, (k, v) in enumerate(sets.items()):
            names[f"#s{i}"] = k
            values[f":s{i}"] = v
            parts.append(f"#s{i} = :s{i}")
        expr = "SET " + ", ".join(parts) if parts else ""
        if removes:
            rparts = []
            for j, k in enumerate(removes):
                names[f"#r{j}"] = k
                rparts.append(f"#r{j}")
            expr += " REMOVE " + ", ".join(rparts)
        return expr.strip(), names, values

    def ping(self) -> None:
        """Raise ServiceUnavailable unless the table answers."""
        self._call("describe_table", TableName=self.table)

    # --- models -----------------------------------------------------------------------

    def put_model(self, model: dict[str, Any]) -> None:
        item = {**keys.model(model["model_id"]), **keys.model_index(model["model_id"]), **model}
        self._put_new(
            item, Conflict("Model already exists", f"model_id {model['model_id']} is registered")
        )

    def get_model(self, model_id: str) -> dict[str, Any] | None:
        return self._get(keys.model(model_id))

    def list_models(self) -> list[dict[str, Any]]:
        return self._query_index("gsi1", "gsi1pk", keys.MODELS_GSI)

    def delete_model(self, model_id: str) -> None:
        self._call("delete_item", TableName=self.table, Key=self._s(keys.model(model_id)))

    def set_model_file_status(self, model_id: str, status: str, info: dict[str, Any]) -> None:
        """Record the verification outcome (verified|invalid|unverified) and file facts."""
        self._update_existing(
            keys.model(model_id),
            {"file_status": status, "file_info": info},
            NotFound("Model not found", f"Unknown model_id: {model_id}"),
        )

    def adapters_of_model(self, model_id: str) -> list[dict[str, Any]]:
        """Adapter items of every tenant built on ``model_id``."""
        return self._query_index("gsi2", "gsi2pk", keys.base_gsi(model_id))

    # --- datasets ---------------------------------------------------------------------

    def put_dataset(self, dataset: dict[str, Any]) -> None:
        t, d = dataset["tenant"], dataset["dataset_id"]
        item = {**keys.dataset(t, d), **keys.dataset_index(t, d), **dataset}
        self._put_new(item, Conflict("Dataset already exists", f"dataset_id {d} already exists"))

    def get_dataset(self, tenant: str, dataset_id: str) -> dict[str, Any] | None:
        return self._get(keys.dataset(tenant, dataset_id))

    def list_datasets(self, tenant: str) -> list[dict[str, Any]]:
        return self._query_index("gsi1", "gsi1pk", keys.datasets_gsi(tenant))

    def delete_dataset(self, tenant: str, dataset_id: str) -> None:
        self._call(
            "delete_item", TableName=self.table, Key=self._s(keys.dataset(tenant, dataset_id))
        )

    # --- adapters, versions, jobs -----------------------------------------------------

    def _adapter_item(self, adapter: dict[str, Any]) -> dict[str, Any]:
        t, a = adapter["tenant"], adapter["adapter_id"]
        return {**keys.adapter(t, a), **keys.adapter_index(t, a, adapter["base_model"]), **adapter}

    def _version_item(self, tenant: str, adapter_id: str, version: dict[str, Any]) -> dict:
        return {**keys.version(tenant, adapter_id, version["version"]), **version}

    def create_adapter(
        self, adapter: dict[str, Any], version: dict[str, Any], job: dict[str, Any]
    ) -> None:
        """Adapter + first version + job in one transaction; Conflict if the id is taken."""
        t, a = adapter["tenant"], adapter["adapter_id"]
        self._transact(
            [
                self._tx_put_new(self._adapter_item(adapter)),
                self._tx_put_new(self._version_item(t, a, version)),
                self._tx_put_new({**keys.job(job["job_id"]), **job}),
            ],
            Conflict("Adapter already exists", f"adapter_id {a} already exists"),
        )

    def undo_create_adapter(self, tenant: str, adapter_id: str, version: str, job_id: str) -> None:
        """Remove what create_adapter wrote (used when the queue send fails)."""
        for key in (
            keys.version(tenant, adapter_id, version),
            keys.job(job_id),
            keys.adapter(tenant, adapter_id),
        ):
            self._call("delete_item", TableName=self.table, Key=self._s(key))

    def add_version(
        self,
        adapter: dict[str, Any],
        version: dict[str, Any],
        job: dict[str, Any],
        now: float,
    ) -> None:
        """New training version + job; the adapter's latest pointer moves in the same
        transaction, conditioned on nobody else having moved it (and nothing training)."""
        t, a = adapter["tenant"], adapter["adapter_id"]
        expr, names, values = self._update_expr(
            {"latest_version": version["version"], "status": "training", "updated_at": iso(now)}
        )
        names["#lv"] = "latest_version"
        names["#st"] = "status"
        values[":old"] = adapter["latest_version"]
        values[":training"] = "training"
        self._transact(
            [
                self._tx_update(
                    keys.adapter(t, a), expr, names, values, "#lv = :old AND #st <> :training"
                ),
                self._tx_put_new(self._version_item(t, a, version)),
                self._tx_put_new({**keys.job(job["job_id"]), **job}),
            ],
            Conflict(
                "Adapter is training", f"Adapter {a} changed or already has a version training"
            ),
        )

    def undo_add_version(self, adapter: dict[str, Any], version: str, job_id: str) -> None:
        """Restore the adapter's previous latest pointer/status and drop version + job."""
        t, a = adapter["tenant"], adapter["adapter_id"]
        expr, names, values = self._update_expr(
            {
                "latest_version": adapter["latest_version"],
                "status": adapter["status"],
                "updated_at": adapter["updated_at"],
            }
        )
        self._call(
            "update_item",
            TableName=self.table,
            Key=self._s(keys.adapter(t, a)),
            UpdateExpression=expr,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=self._vals(values),
        )
        self._call("delete_item", TableName=self.table, Key=self._s(keys.version(t, a, version)))
        self._call("delete_item", TableName=self.table, Key=self._s(keys.job(job_id)))

    def get_adapter(self, tenant: str, adapter_id: str) -> dict[str, Any] | None:
        return self._get(keys.adapter(tenant, adapter_id))

    def list_adapters(self, tenant: str) -> list[dict[str, Any]]:
        return self._query_index("gsi1", "gsi1pk", keys.adapters_gsi(tenant))

    def count_adapters(self, tenant: str) -> int:
        total, start = 0, None
        while True:
            args: dict[str, Any] = dict(
                TableName=self.table,
                IndexName="gsi1",
                KeyConditionExpression="gsi1pk = :p",
                ExpressionAttributeValues=self._vals({":p": keys.adapters_gsi(tenant)}),
                Select="COUNT",
            )
            if start:
                args["ExclusiveStartKey"] = start
            resp = self._call("query", **args)
            total += resp.get("Count", 0)
            start = resp.get("LastEvaluatedKey")
            if not start:
                return total

    def get_version(self, tenant: str, adapter_id: str, version: str) -> dict[str, Any] | None:
        return self._get(keys.version(tenant, adapter_id, version))

    def list_versions(self, tenant: str, adapter_id: str) -> list[dict[str, Any]]:
        """Versions of an adapter, oldest first (numeric order)."""
        items = self._query_all(
            KeyConditionExpression="pk = :p AND begins_with(sk, :v)",
            ExpressionAttributeValues=self._vals(
                {":p": keys.adapter_pk(tenant, adapter_id), ":v": keys.VERSION_PREFIX}
            ),
            ConsistentRead=True,
        )
        out = [strip_keys(i) for i in items]
        return sorted(out, key=lambda v: version_number(v["version"]))  # type: ignore[index]

    def delete_adapter(self, tenant: str, adapter_id: str) -> None:
        """Adapter item and every version item."""
        items = self._query_all(
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues=self._vals({":p": keys.adapter_pk(tenant, adapter_id)}),
            ProjectionExpression="pk, sk",
            ConsistentRead=True,
        )
        for item in items:
            self._call(
                "delete_item",
                TableName=self.table,
                Key=self._s({"pk": item["pk"], "sk": item["sk"]}),
            )

    def delete_version(
        self,
        adapter: dict[str, Any],
        version: str,
        adapter_updates: dict[str, Any],
        promote: str | None,
    ) -> None:
        """Delete one version; update the adapter pointers; optionally mark the promoted
        version ``ready`` (it becomes the serving one)."""
        t, a = adapter["tenant"], adapter["adapter_id"]
        expr, names, values = self._update_expr(adapter_updates)
        names["#lv"] = "latest_version"
        values[":old"] = adapter["latest_version"]
        items: list[dict[str, Any]] = [
            {
                "Delete": {
                    "TableName": self.table,
                    "Key": self._s(keys.version(t, a, version)),
                    "ConditionExpression": "attribute_exists(pk)",
                }
            },
            self._tx_update(keys.adapter(t, a), expr, names, values, "#lv = :old"),
        ]
        if promote:
            items.append(
                self._tx_update(
                    keys.version(t, a, promote),
                    "SET #st = :ready",
                    {"#st": "status"},
                    {":ready": "ready"},
                    # A concurrent delete of the version being promoted must not resurrect it.
                    "attribute_exists(pk)",
                )
            )
        self._transact(items, Conflict("Adapter changed", f"Adapter {a} changed; retry"))

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return self._get(keys.job(job_id))

    def claim_job(
        self, job_id: str, now: float, stale_after: float | None = None
    ) -> dict[str, Any] | None:
        """queued -> running (conditional). None when the job is missing or not claimable, so
        a duplicate SQS delivery is dropped. With ``stale_after`` (seconds), a job still
        ``running`` whose heartbeat is older than that is taken over: its worker died (host
        lost, process killed) without recording an outcome."""
        from botocore.exceptions import ClientError

        expr, names, values = self._update_expr(
            {"state": "running", "started_at": iso(now), "heartbeat_at": iso(now)}
        )
        values[":queued"] = "queued"
        condition = "#s0 = :queued"
        if stale_after is not None:
            names["#hb"] = "heartbeat_at"
            values.update({":running": "running", ":stale": iso(now - stale_after)})
            # ISO-8601 UTC strings of one format order like the times they name.
            condition += " OR (#s0 = :running AND #hb < :stale)"
        try:
            resp = self._call(
                "update_item",
                TableName=self.table,
                Key=self._s(keys.job(job_id)),
                UpdateExpression=expr,
                ConditionExpression=f"attribute_exists(pk) AND ({condition})",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=self._vals(values),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if self._is_condition_failure(exc):
                return None
            raise
        return strip_keys(self._d(resp["Attributes"]))

    def record_job_progress(
        self, job_id: str, step: int, total_steps: int, loss: float | None, now: float
    ) -> None:
        sets: dict[str, Any] = {"step": step, "total_steps": total_steps, "heartbeat_at": iso(now)}
        if loss is not None:
            sets["loss"] = float(loss)
        expr, names, values = self._update_expr(sets)
        self._call(
            "update_item",
            TableName=self.table,
            Key=self._s(keys.job(job_id)),
            UpdateExpression=expr,
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=self._vals(values),
        )

    def record_job_heartbeat(self, job_id: str, now: float) -> None:
        """Refresh a running job's lease (see claim_job's ``stale_after``)."""
        self._call(
            "update_item",
            TableName=self.table,
            Key=self._s(keys.job(job_id)),
            UpdateExpression="SET #hb = :now",
            ConditionExpression="#st = :running",
            ExpressionAttributeNames={"#hb": "heartbeat_at", "#st": "state"},
            ExpressionAttributeValues=self._vals({":now": iso(now), ":running": "running"}),
        )

    def record_batch_submission(self, job_id: str, batch_job_id: str, now: str | float) -> None:
        """Record the AWS Batch job id on the job item (dispatch function). ``now`` is an
        ISO-8601 string or epoch seconds. NotFound if the job item is gone."""
        ts = now if isinstance(now, str) else iso(now)
        self._update_existing(
            keys.job(job_id),
            {"batch_job_id": batch_job_id, "submitted_at": ts},
            NotFound("Job not found", f"Unknown job_id: {job_id}"),
        )

    def mark_version_ready(
        self, job: dict[str, Any], artifacts: dict[str, Any], metrics: dict[str, Any], now: float
    ) -> None:
        """The ready flip, one transaction: version training->ready (status = training and
        job_id matches), job running->succeeded, adapter serving_version/status, previous
        serving version ready->stored. Conflict if any condition fails."""
        t, a, v = job["tenant"], job["adapter_id"], job["version"]
        adapter = self.get_adapter(t, a)
        if adapter is None:
            raise Conflict("Adapter not found", f"Adapter {a} was deleted")
        previous = adapter.get("serving_version")
        ts = iso(now)
        vexpr, vnames, vvalues = self._update_expr(
            {
                "status": "ready",
                "metrics": metrics,
                "ready_at": ts,
                **{
                    k: artifacts[k]
                    for k in (
                        "artifact_prefix",
                        "manifest_key",
                        "manifest_sha256",
                        "gguf_key",
                        "gguf_sha256",
                        "gguf_size",
                    )
                    if k in artifacts
                },
            }
        )
        vnames.update({"#vst": "status", "#jid": "job_id"})
        vvalues.update({":training": "training", ":jid": job["job_id"]})
        jexpr, jnames, jvalues = self._update_expr({"state": "succeeded", "finished_at": ts})
        jnames["#state"] = "state"
        jvalues[":running"] = "running"
        adapter_sets: dict[str, Any] = {"serving_version": v, "updated_at": ts}
        if adapter.get("latest_version") == v:
            adapter_sets["status"] = "ready"
        aexpr, anames, avalues = self._update_expr(adapter_sets)
        anames["#sv"] = "serving_version"
        if previous is None:
            acond = "attribute_not_exists(#sv) OR #sv = :none"
            avalues[":none"] = None
        else:
            acond = "#sv = :prev"
            avalues[":prev"] = previous
        items: list[dict[str, Any]] = [
            self._tx_update(
                keys.version(t, a, v), vexpr, vnames, vvalues, "#vst = :training AND #jid = :jid"
            ),
            self._tx_update(keys.job(job["job_id"]), jexpr, jnames, jvalues, "#state = :running"),
            self._tx_update(
                keys.adapter(t, a), aexpr, anames, avalues, f"attribute_exists(pk) AND ({acond})"
            ),
        ]
        if previous and previous != v:
            items.append(
                self._tx_update(
                    keys.version(t, a, previous),
                    "SET #st = :stored",
                    {"#st": "status"},
                    {":stored": "stored", ":ready": "ready"},
                    "#st = :ready",
                )
            )
        self._transact(
            items, Conflict("Ready flip refused", f"Version {v} of {a} is not training/running")
        )

    def mark_version_failed(self, job: dict[str, Any], error: str, now: float) -> None:
        """Version training->failed with ``error``; job -> failed; the adapter's status
        follows when this is its latest version; serving_version is left alone."""
        t, a, v = job["tenant"], job["adapter_id"], job["version"]
        ts = iso(now)
        vexpr, vnames, vvalues = self._update_expr(
            {"status": "failed", "error": error, "failed_at": ts}
        )
        vnames["#jid"] = "job_id"
        vvalues.update({":training": "training", ":jid": job["job_id"]})
        jexpr, jnames, jvalues = self._update_expr(
            {"state": "failed", "error": error, "finished_at": ts}
        )
        items: list[dict[str, Any]] = [
            self._tx_update(
                keys.version(t, a, v), vexpr, vnames, vvalues, "#s0 = :training AND #jid = :jid"
            ),
            self._tx_update(keys.job(job["job_id"]), jexpr, jnames, jvalues),
        ]
        adapter = self.get_adapter(t, a)
        if adapter is not None and adapter.get("latest_version") == v:
            aexpr, anames, avalues = self._update_expr({"status": "failed", "updated_at": ts})
            anames["#lv"] = "latest_version"
            avalues[":v"] = v
            items.append(self._tx_update(keys.adapter(t, a), aexpr, anames, avalues, "#lv = :v"))
        self._transact(items, Conflict("Fail flip refused", f"Version {v} of {a} is not training"))

    # --- audit, rate limit ------------------------------------------------------------

    def put_audit(self, audit: dict[str, Any]) -> None:
        t, aid = audit["tenant"], audit["audit_id"]
        item = {**keys.audit(t, aid), **keys.audit_index(t, aid), **audit}
        self._call("put_item", TableName=self.table, Item=self._s(item))

    def get_audit(self, tenant: str, audit_id: str) -> dict[str, Any] | None:
        return self._get(keys.audit(tenant, audit_id))

    def increment_rate(self, key: dict[str, str], expires_at: int) -> int:
        resp = self._call(
            "update_item",
            TableName=self.table,
            Key=self._s(key),
            UpdateExpression="ADD #c :one SET expires_at = if_not_exists(expires_at, :exp)",
            ExpressionAttributeNames={"#c": "count"},
            ExpressionAttributeValues=self._vals({":one": 1, ":exp": expires_at}),
            ReturnValues="UPDATED_NEW",
        )
        return int(self._d(resp["Attributes"])["count"])
