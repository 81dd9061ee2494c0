#!/usr/bin/env python3
"""Checks deploy/ against the metrics pipeline-control exports (Python 3 standard library only).

    python3 deploy/check.py

- grafana/pipeline-control.json parses; every panel has a unique id and a gridPos inside the
  24-column grid, no two panels overlap, every query uses the ${datasource} variable, and the
  `datasource` and `instance` template variables are there.
- When promtool is at hand (PROMTOOL, or on PATH), it parses every dashboard query.
- Every PromQL expression (the dashboard's queries and variables, alerts.yml's rules) names only
  metrics in METRICS below (a histogram only with _bucket, _sum or _count; `up` too), matches and
  groups by only labels those metrics have (plus the target labels job and instance, and le for
  _bucket), uses label values from the closed sets in VALUES, and calls only PromQL functions.
- prometheus/alerts.yml: group `pipeline-control`; every alert has `for`, a severity of page or
  ticket, a summary and a description, and the dashboard panels its descriptions name exist.
- prometheus/alerts_test.yml: every alert has a test where it fires and one where it must not,
  tests name only alerts that exist, and their input series only the contract's metrics.
  (Whether the tests pass is promtool's job:
  `promtool test rules deploy/prometheus/alerts_test.yml`.)

METRICS is the metric contract (keep it in step with the service's metrics): names, types and
labels. The YAML reader handles the subset these files use (block mappings and sequences,
quoted and plain one-line scalars, | and > block scalars, []), and says so when it meets more.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "grafana" / "pipeline-control.json"
ALERTS = HERE / "prometheus" / "alerts.yml"
ALERTS_TEST = HERE / "prometheus" / "alerts_test.yml"

GRPC_LABELS = {"grpc_type", "grpc_service", "grpc_method"}

# name -> (type, labels). Every series also carries the target labels (TARGET_LABELS).
METRICS = {
    # gRPC server (go-grpc-middleware names)
    "grpc_server_started_total": ("counter", GRPC_LABELS),
    "grpc_server_handled_total": ("counter", GRPC_LABELS | {"grpc_code"}),
    "grpc_server_msg_received_total": ("counter", GRPC_LABELS),
    "grpc_server_msg_sent_total": ("counter", GRPC_LABELS),
    "grpc_server_handling_seconds": ("histogram", GRPC_LABELS),
    # the service's own
    "pipeline_control_build_info": ("gauge", {"version"}),
    "pipeline_control_serving": ("gauge", set()),
    "pipeline_control_stop_requests_total": ("counter", {"outcome", "replayed"}),
    "pipeline_control_stop_duplicates_total": ("counter", {"result"}),
    "pipeline_control_stop_takeovers_total": ("counter", {"by"}),
    "pipeline_control_stop_leases_expired": ("gauge", set()),
    "pipeline_control_upstream_requests_total": ("counter", {"operation", "result"}),
    "pipeline_control_upstream_request_duration_seconds": ("histogram", {"operation"}),
    "pipeline_control_upstream_retries_total": ("counter", {"operation"}),
    "pipeline_control_upstream_throttles_total": ("counter", {"operation"}),
    "pipeline_control_watch_streams": ("gauge", set()),
    "pipeline_control_watch_streams_limit": ("gauge", set()),
    "pipeline_control_pollers": ("gauge", set()),
    "pipeline_control_watch_pollers": ("gauge", {"role"}),
    "pipeline_control_watch_fallbacks_total": ("counter", set()),
    "pipeline_control_watch_unanswered_wakeups_total": ("counter", set()),
    "pipeline_control_events_total": ("counter", {"result"}),
    "pipeline_control_events_flowing": ("gauge", set()),
    "pipeline_control_snapshots_published_total": ("counter", set()),
    "pipeline_control_store_statements_total": ("counter", {"operation", "result"}),
    "pipeline_control_store_statement_duration_seconds": ("histogram", {"operation"}),
    "pipeline_control_audit_queue_depth": ("gauge", set()),
    "pipeline_control_audit_events_dropped_total": ("counter", {"reason"}),
    "pipeline_control_auth_refusals_total": ("counter", {"reason"}),
    "pipeline_control_authentications_total": ("counter", {"method", "result"}),
    "pipeline_control_jwks_fetches_total": ("counter", {"result"}),
    "pipeline_control_file_reloads_total": ("counter", {"file", "result"}),
    "pipeline_control_limit_refusals_total": ("counter", {"limit"}),
    "pipeline_control_connections_closed_total": ("counter", {"reason"}),
    "pipeline_control_accept_errors_total": ("counter", set()),
    "pipeline_control_reads_total": ("counter", {"source"}),
    "pipeline_control_trace_spans_dropped_total": ("counter", set()),
    # Prometheus's own, per target
    "up": ("gauge", set()),
}
TARGET_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

GRPC_CODES = {
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
}
GRPC_TYPES = {"unary", "client_stream", "server_stream", "bidi_stream"}
# (metric, label) -> the label's values, where the contract closes the set. Open sets
# (outcome, operation, grpc_method, ...) are not checked.
VALUES = {
    ("pipeline_control_upstream_requests_total", "result"): {
        "ok", "not_found", "not_executing", "throttled", "conflict", "error", "access_denied",
        "invalid", "rejected",
    },
    ("pipeline_control_store_statements_total", "result"): {"ok", "error"},
    ("pipeline_control_stop_requests_total", "replayed"): {"true", "false"},
    ("pipeline_control_stop_duplicates_total", "result"): {"answered", "aborted", "took_over"},
    ("pipeline_control_stop_takeovers_total", "by"): {"completer", "caller"},
    ("pipeline_control_auth_refusals_total", "reason"): {
        "no_credentials", "bad_token", "revoked_token", "bad_certificate", "credentials_invalid",
        "credentials_expired", "permission_denied",
    },
    ("pipeline_control_authentications_total", "method"): {
        "token", "mtls", "jwt", "iam", "mesh", "anonymous",
    },
    ("pipeline_control_authentications_total", "result"): {"ok", "refused"},
    ("pipeline_control_jwks_fetches_total", "result"): {"ok", "error"},
    ("pipeline_control_file_reloads_total", "file"): {"tokens", "policy", "identity", "accounts"},
    ("pipeline_control_file_reloads_total", "result"): {"ok", "kept_previous"},
    ("pipeline_control_limit_refusals_total", "limit"): {
        "concurrency", "caller_share", "body_deadline", "stop_rate", "read_rate",
        "watch_streams", "message_size", "message_bytes",
    },
    ("pipeline_control_connections_closed_total", "reason"): {
        "handshake_timeout", "write_timeout",
    },
    ("pipeline_control_reads_total", "source"): {"upstream", "shared", "snapshot"},
}
for _name, (_type, _labels) in METRICS.items():
    if _name.startswith("grpc_server_"):
        VALUES[(_name, "grpc_type")] = GRPC_TYPES
        if "grpc_code" in _labels:
            VALUES[(_name, "grpc_code")] = GRPC_CODES

# PromQL functions and aggregation operators (Prometheus 2.x).
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar",
    "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
    "start", "end",  # the @ modifier's start() and end()
}
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}
FUNCTIONS |= AGGREGATIONS
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}

TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<num>(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:[a-zA-Z]+\d*)*)
    | (?P<var>\$\{[^}]*\}|\$\w+)
    | (?P<ident>[a-zA-Z_:][\w:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}@])
    """,
    re.X,
)


def tokenize(expr):
    tokens, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot read {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            tokens.append((m.lastgroup, m.group()))
    return tokens


def unquote(s):
    if s[0] == "`":
        return s[1:-1]
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def metric_labels(name):
    """(base name, labels) of a series name, or None when the contract has no such series."""
    if name in METRICS:
        kind, labels = METRICS[name]
        return None if kind == "histogram" else (name, set(labels))
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and METRICS.get(base, ("",))[0] == "histogram":
            return base, set(METRICS[base][1]) | ({"le"} if suffix == "_bucket" else set())
    return None


def check_promql(expr, where, errors):
    """Checks one PromQL expression; returns the metric names it uses."""
    try:
        tokens = tokenize(expr)
    except ValueError as e:
        errors.append(f"{where}: {e}")
        return set()
    used, grouping = set(), []
    allowed = set(TARGET_LABELS)
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else None
        if kind == "ident" and text in GROUPING:
            i += 1
            if nxt == "(":
                i += 1
                while i < len(tokens) and tokens[i][1] != ")":
                    if tokens[i][0] == "ident":
                        grouping.append(tokens[i][1])
                    i += 1
                i += 1
            continue
        if kind == "ident" and text.lower() in KEYWORDS:
            i += 1
            continue
        if kind == "ident" and text in AGGREGATIONS and nxt in ("by", "without"):
            i += 1  # sum by (...) (...)
            continue
        if kind == "ident" and nxt == "(":
            if text not in FUNCTIONS:
                errors.append(f"{where}: unknown function {text}()")
            i += 1
            continue
        if kind == "ident" or text == "{":
            name = text if kind == "ident" else None
            i += 1 if kind == "ident" else 0
            matchers = []
            if i < len(tokens) and tokens[i][1] == "{":
                i += 1
                while i < len(tokens) and tokens[i][1] != "}":
                    if tokens[i][1] == ",":
                        i += 1
                        continue
                    if (i + 2 >= len(tokens) or tokens[i][0] != "ident"
                            or tokens[i + 2][0] != "str"):
                        errors.append(f"{where}: cannot read the matchers of {name or '{...}'}")
                        break
                    matchers.append((tokens[i][1], tokens[i + 1][1], unquote(tokens[i + 2][1])))
                    i += 3
                i += 1
            for label, op, value in matchers:
                if label == "__name__" and op == "=":
                    name = value
            if name is None:
                errors.append(f"{where}: a selector without a metric name")
                continue
            found = metric_labels(name)
            if found is None:
                if name in METRICS:
                    errors.append(f"{where}: {name} is a histogram: use {name}_bucket, _sum or _count")
                else:
                    errors.append(f"{where}: {name} is not a metric the service exports")
                continue
            base, labels = found
            used.add(name)
            allowed |= labels
            for label, op, value in matchers:
                if label == "__name__":
                    continue
                if label not in labels | TARGET_LABELS:
                    errors.append(f"{where}: {name} has no label {label}")
                    continue
                values = VALUES.get((base, label))
                if values is None or "$" in value:
                    continue
                if op in ("=", "!="):
                    wanted = [value]
                elif re.fullmatch(r"[\w|]+", value):
                    wanted = value.split("|")
                else:
                    continue
                for v in wanted:
                    if v not in values:
                        errors.append(f"{where}: {name}{{{label}}} has no value {v!r}"
                                      f" (one of {', '.join(sorted(values))})")
            continue
        i += 1
    for label in grouping:
        if label not in allowed:
            errors.append(f"{where}: groups by {label}, a label none of its metrics has")
    return used


# --- A reader for the YAML these files use -------------------------------------------------

class YamlError(Exception):
    pass


class MiniYaml:
    KEY = re.compile(r"^([A-Za-z_][\w.-]*):(?:[ \t]+(.*))?$")

    def __init__(self, text, path):
        self.lines = text.split("\n")
        self.path = path
        self.i = 0

    def fail(self, msg):
        raise YamlError(f"{self.path}:{self.i + 1}: {msg}")

    def peek(self):
        while self.i < len(self.lines):
            s = self.lines[self.i].strip()
            if s and not s.startswith("#"):
                line = self.lines[self.i]
                if "\t" in line[: len(line) - len(line.lstrip())]:
                    self.fail("tab in indentation")
                return len(line) - len(line.lstrip(" ")), s
            self.i += 1
        return None

    def document(self):
        p = self.peek()
        node = None if p is None else self.node(p[0])
        if self.peek() is not None:
            self.fail("unexpected content (not the YAML subset this reader knows)")
        return node

    def node(self, indent):
        _, s = self.peek()
        return self.seq(indent) if s == "-" or s.startswith("- ") else self.map(indent)

    def seq(self, indent):
        items = []
        while True:
            p = self.peek()
            if p is None or p[0] < indent:
                return items
            if p[0] > indent or not (p[1] == "-" or p[1].startswith("- ")):
                self.fail("bad indentation in a sequence")
            rest = p[1][1:].lstrip()
            if not rest:
                self.i += 1
                q = self.peek()
                items.append(self.node(q[0]) if q and q[0] > indent else None)
            elif self.KEY.match(rest):
                col = indent + (len(p[1]) - len(rest))
                self.lines[self.i] = " " * col + rest
                items.append(self.map(col))
            else:
                self.i += 1
                items.append(self.scalar(rest, indent))
        return items

    def map(self, indent):
        d = {}
        while True:
            p = self.peek()
            if p is None or p[0] < indent:
                return d
            if p[0] > indent:
                self.fail("bad indentation in a mapping")
            if p[1] == "-" or p[1].startswith("- "):
                return d
            m = self.KEY.match(p[1])
            if not m:
                self.fail(f"expected `key: value`, got {p[1][:40]!r}")
            key, value = m.group(1), (m.group(2) or "").strip()
            if key in d:
                self.fail(f"duplicate key {key}")
            self.i += 1
            if value == "" or value.startswith("#"):
                q = self.peek()
                if q and (q[0] > indent or (q[0] == indent and (q[1] == "-" or q[1].startswith("- ")))):
                    d[key] = self.node(q[0])
                else:
                    d[key] = None
            elif value[0] in "|>":
                d[key] = self.block(value, indent)
            else:
                d[key] = self.scalar(value, indent)

    def scalar(self, s, indent):
        q = self.peek()
        if q and q[0] > indent:
            self.fail("a scalar over several lines (use | or >)")
        if s in ("[]", "{}"):
            return [] if s == "[]" else {}
        if s[0] == '"':
            if not s.endswith('"') or len(s) < 2:
                self.fail("unterminated double-quoted string")
            return json.loads(s)
        if s[0] == "'":
            if not s.endswith("'") or len(s) < 2:
                self.fail("unterminated single-quoted string")
            return s[1:-1].replace("''", "'")
        if s[0] in "[{&*!%@`":
            self.fail(f"unsupported YAML: {s[:40]!r}")
        return re.sub(r"\s+#.*$", "", s)

    def block(self, header, indent):
        m = re.fullmatch(r"([|>])([-+]?)\s*(#.*)?", header)
        if not m:
            self.fail(f"unsupported block scalar header {header!r}")
        style, chomp = m.group(1), m.group(2)
        raw = []
        content_indent = None
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip():
                ind = len(line) - len(line.lstrip(" "))
                if ind <= indent:
                    break
                if content_indent is None:
                    content_indent = ind
                if ind < content_indent:
                    break
                raw.append(line[content_indent:])
            else:
                raw.append("")
            self.i += 1
        while raw and raw[-1] == "":
            raw.pop()
        if style == "|":
            text = "\n".join(raw)
        else:
            text, para = [], []
            for line in raw:
                if line == "":
                    text.append(" ".join(para))
                    para = []
                else:
                    para.append(line)
            text.append(" ".join(para))
            text = "\n".join(text)
        return text if chomp == "-" else text + "\n"


def read_yaml(path, errors):
    try:
        return MiniYaml(path.read_text(), path.relative_to(HERE.parent)).document()
    except (OSError, YamlError, ValueError) as e:
        errors.append(str(e))
        return None


# --- The checks ------------------------------------------------------------------------------

DASHBOARD_EXPRS = []  # (where, expr) of every dashboard query, for check_dashboard_syntax


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels") or [])


def check_dashboard(errors):
    try:
        dash = json.loads(DASHBOARD.read_text())
    except (OSError, ValueError) as e:
        errors.append(f"{DASHBOARD.name}: {e}")
        return None, 0, 0
    where = DASHBOARD.name
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        errors.append(f"{where}: schemaVersion should be 36 or later")
    for key in ("uid", "title"):
        if not dash.get(key):
            errors.append(f"{where}: no {key}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        errors.append(f"{where}: no `datasource` variable of Prometheus data sources")
    inst = variables.get("instance")
    inst_query = (inst or {}).get("query")
    if isinstance(inst_query, dict):
        inst_query = inst_query.get("query")
    if not inst or inst.get("type") != "query" or not re.fullmatch(
            r"label_values\(\s*pipeline_control_build_info\s*,\s*instance\s*\)", inst_query or ""):
        errors.append(f"{where}: no `instance` variable from "
                      "label_values(pipeline_control_build_info, instance)")
    for name, v in variables.items():
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") != "query" or not isinstance(q, str):
            continue
        m = re.fullmatch(r"label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)", q)
        check_promql(m.group(1) if m else q, f"{where}: variable {name}", errors)
        if m and m.group(2) not in (metric_labels(m.group(1)) or ("", set()))[1] | TARGET_LABELS:
            errors.append(f"{where}: variable {name}: {m.group(1)} has no label {m.group(2)}")

    ids, titles, boxes, queries = set(), {}, [], 0
    panels = list(walk_panels(dash.get("panels", [])))
    for p in panels:
        title = p.get("title", "")
        here = f"{where}: panel {p.get('id')} {title!r}"
        pid = p.get("id")
        if not isinstance(pid, int) or isinstance(pid, bool):
            errors.append(f"{here}: no integer id")
        elif pid in ids:
            errors.append(f"{here}: id {pid} used twice")
        ids.add(pid)
        if title in titles:
            errors.append(f"{here}: title used twice")
        titles[title] = p
        g = p.get("gridPos")
        if not isinstance(g, dict) or not all(
                isinstance(g.get(k), int) and not isinstance(g.get(k), bool) for k in "hwxy"):
            errors.append(f"{here}: gridPos needs integers h, w, x and y")
        elif g["w"] < 1 or g["h"] < 1 or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > 24:
            errors.append(f"{here}: gridPos {g} is outside the 24-column grid")
        else:
            for other, og in boxes:
                if (g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"]
                        and g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]):
                    errors.append(f"{here}: overlaps panel {other}")
            boxes.append((pid, g))
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            errors.append(f"{here}: datasource should be ${{datasource}}")
        targets = p.get("targets") or []
        if not targets:
            errors.append(f"{here}: no queries")
        refs = set()
        for t in targets:
            if t.get("refId") in refs:
                errors.append(f"{here}: refId {t.get('refId')} used twice")
            refs.add(t.get("refId"))
            if "datasource" in t and (t["datasource"] or {}).get("uid") != "${datasource}":
                errors.append(f"{here}: query {t.get('refId')}: datasource should be ${{datasource}}")
            if not t.get("expr"):
                errors.append(f"{here}: query {t.get('refId')} has no expr")
                continue
            queries += 1
            check_promql(t["expr"], f"{here} query {t.get('refId')}", errors)
            DASHBOARD_EXPRS.append((f"{here} query {t.get('refId')}", t["expr"]))
    return titles, len(panels), queries


def check_alerts(titles, errors):
    doc = read_yaml(ALERTS, errors)
    if doc is None:
        return []
    where = ALERTS.name
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list) or [g.get("name") for g in groups] != ["pipeline-control"]:
        errors.append(f"{where}: expected one group, named pipeline-control")
        groups = groups if isinstance(groups, list) else []
    names = []
    for g in groups:
        for rule in g.get("rules") or []:
            name = rule.get("alert") or rule.get("record")
            here = f"{where}: {name}"
            check_promql(rule.get("expr") or "", here, errors)
            if "record" in rule:
                continue
            if name in names:
                errors.append(f"{here}: alert defined twice")
            names.append(name)
            if not rule.get("for"):
                errors.append(f"{here}: no `for`")
            if (rule.get("labels") or {}).get("severity") not in ("page", "ticket"):
                errors.append(f"{here}: severity should be page or ticket")
            annotations = rule.get("annotations") or {}
            for key in ("summary", "description"):
                if not annotations.get(key):
                    errors.append(f"{here}: no {key} annotation")
            for panel in re.findall(r""""([^"]+)" panel""", annotations.get("description") or ""):
                if titles is not None and panel not in titles:
                    errors.append(f"{here}: names the panel {panel!r}, which the dashboard lacks")
    return names


def check_alert_tests(alerts, errors):
    doc = read_yaml(ALERTS_TEST, errors)
    if doc is None:
        return
    where = ALERTS_TEST.name
    if "alerts.yml" not in (doc.get("rule_files") or []):
        errors.append(f"{where}: rule_files should load alerts.yml")
    fires, quiet = set(), set()
    for test in doc.get("tests") or []:
        for series in test.get("input_series") or []:
            check_promql(series.get("series") or "", f"{where}: test {test.get('name')!r}", errors)
        for case in test.get("alert_rule_test") or []:
            name = case.get("alertname")
            if name not in alerts:
                errors.append(f"{where}: test {test.get('name')!r} names {name}, which alerts.yml lacks")
            (fires if case.get("exp_alerts") else quiet).add(name)
    for name in alerts:
        if name not in fires:
            errors.append(f"{where}: no test where {name} fires")
        if name not in quiet:
            errors.append(f"{where}: no test where {name} must not fire")


def grafana_to_promql(expr):
    """A dashboard query as plain PromQL: Grafana's variables replaced by values of their kind."""
    expr = re.sub(r"\$\{?__(rate_)?interval\}?", "5m", expr)
    expr = re.sub(r"\$\{?__range\}?", "1h", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def check_dashboard_syntax(exprs, errors):
    """Has promtool parse the dashboard's queries (as recording rules), when it is at hand:
    PROMTOOL from the environment (scripts/test sets it) or promtool on PATH."""
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool or not exprs:
        return False
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (where, expr) in enumerate(exprs):
        lines += [f"      - record: dashboard:query_{i}",
                  f"        expr: {json.dumps(grafana_to_promql(expr))}"]
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "dashboard.yml"
        rules.write_text("\n".join(lines) + "\n")
        run = subprocess.run([promtool, "check", "rules", str(rules)],
                             capture_output=True, text=True)
    if run.returncode != 0:
        out = (run.stdout + run.stderr).replace(str(rules), "(the dashboard's queries)")
        for n in sorted({int(n) for n in re.findall(r"dashboard:query_(\d+)", out)}):
            errors.append(f"{exprs[n][0]}: promtool cannot parse it")
        errors.append(f"promtool check rules on the dashboard's queries:\n{out.strip()}")
    return True


def main():
    errors = []
    titles, panels, queries = check_dashboard(errors)
    parsed = check_dashboard_syntax(DASHBOARD_EXPRS, errors)
    alerts = check_alerts(titles, errors)
    check_alert_tests(alerts, errors)
    if errors:
        for e in errors:
            print(f"check.py: {e}", file=sys.stderr)
        print(f"check.py: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print(f"check.py: ok: dashboard ({panels} panels and rows, {queries} queries"
          f"{', parsed by promtool' if parsed else ''}), alerts.yml ({len(alerts)} alerts), "
          f"alerts_test.yml (each alert fires and stays quiet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
