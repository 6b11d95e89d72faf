#!/usr/bin/env python3
"""Rules the plugin's Swift and Kotlin adapters must keep, checked on their
syntax trees (tree-sitter) because no Swift compiler or Android SDK runs
where the suite runs. Each rule is something iOS or Android punishes at run
time, or drift from the Rust core's generated bindings:

- every file parses;
- PushKit: `reportNewIncomingCall` is called in the VoIP push callback
  itself, outside any closure, Task or dispatch; between the core's
  decision (`handlePush` / `classifyPush`) and the report nothing but the
  audio-session set-up and the report's own arguments runs; PushKit's
  `completion` is called only from the report's completion (or on a path
  that reports nothing);
- nothing calls `setActive` (CallKit activates the audio session), except
  `activateAudioWithoutCallKit`: the one path where there is no CallKit;
- every `provider(_:perform:)` fulfils or fails its action, also on each
  early return;
- Keychain items are `kSecAttrAccessibleAfterFirstUnlock*` (a VoIP wake on
  a locked phone must read the saved configuration);
- every `startForeground` passes a foreground service type (Android 14);
- every core method, constructor label, record field label (named
  arguments of `ClientConfig(...)`, `AudioEndpoint(...)`, ...) and free
  function the adapters call exists in the generated bindings, and every port the adapters implement
  has each of its methods (name and labels) implemented.

Usage: check_adapters.py --swift-bindings F.swift --kotlin-bindings F.kt
       [--self-test]  (each rule must catch a broken example first)
Exit status 1 with one line per violation.
"""

import argparse
import pathlib
import re
import sys

import tree_sitter_kotlin
import tree_sitter_swift
from tree_sitter import Language, Parser

SWIFT = Parser(Language(tree_sitter_swift.language()))
KOTLIN = Parser(Language(tree_sitter_kotlin.language()))

ROOT = pathlib.Path(__file__).resolve().parent.parent
SWIFT_SOURCES = ROOT / "ios" / "Sources" / "SwitchboardPlugin"
KOTLIN_SOURCES = ROOT / "android" / "src" / "main" / "java"

# The Rust core's ports (UniFFI foreign traits).
PORTS = {"SystemCallUi", "MediaFactory", "MediaSession", "AudioRoutes", "PushTokens",
         "Credentials", "CallEvents"}
# Receivers that are the core's `Client` in the adapters (`client`,
# `core`, `self.client`, `SwitchboardCalls.currentClient()`, ...).
CLIENT_RECEIVER = re.compile(r"(^|\.)(client|core|currentClient\(\)|ensureClient\([^)]*\))$")
# Kotlin's scope functions apply to anything.
SCOPE_FUNCTIONS = {"let", "also", "apply", "run", "takeIf", "takeUnless"}
# Free functions of the core the adapters may call.
CORE_FUNCTION_PREFIXES = ("classifyPush", "clientConfig", "callkitEndedReason",
                          "telecomDisconnectCause")
# The one function that activates the audio session itself (no CallKit).
WITHOUT_CALLKIT = "activateAudioWithoutCallKit"
# What may run between the push decision and `reportNewIncomingCall`.
BETWEEN_DECISION_AND_REPORT = {"configureAudioSession", "UUID", "update"}


def walk(node):
    yield node
    for child in node.children:
        yield from walk(child)


def text(node):
    return node.text.decode()


def callee_name(call):
    """The called name of a call_expression (`a.b.c(...)` -> `c`)."""
    callee = call.children[0]
    if callee.type in ("simple_identifier", "identifier"):
        return text(callee)
    if callee.type == "navigation_expression":
        suffix = callee.children[-1]
        names = [n for n in walk(suffix) if n.type in ("simple_identifier", "identifier")]
        return text(names[-1]) if names else None
    return None


def receiver(call):
    callee = call.children[0]
    if callee.type == "navigation_expression":
        target = callee.child_by_field_name("target") or callee.children[0]
        return text(target).rstrip("?!").replace("?", "")
    return None


def switch_entry_of(node, stop):
    return next((a for a in ancestors(node, stop) if a.type == "switch_entry"), None)


def calls(node):
    return [n for n in walk(node) if n.type == "call_expression"]


def ancestors(node, stop):
    node = node.parent
    while node is not None and node != stop:
        yield node
        node = node.parent


class Checker:
    def __init__(self):
        self.violations = []

    def fail(self, where, message):
        self.violations.append(f"{where}: {message}")

    # -- every file parses ------------------------------------------------
    def parses(self, name, tree):
        bad = [n for n in walk(tree.root_node) if n.type == "ERROR" or n.is_missing]
        for n in bad[:3]:
            self.fail(name, f"does not parse at line {n.start_point[0] + 1}")
        return not bad

    # -- PushKit ------------------------------------------------------------
    def pushkit(self, name, tree):
        handlers = [
            n for n in walk(tree.root_node)
            if n.type == "function_declaration"
            and text(n.child_by_field_name("name")) == "pushRegistry"
            and "didReceiveIncomingPushWith" in text(n)[:400]
        ]
        for handler in handlers:
            body = handler.child_by_field_name("body")
            reports = [c for c in calls(body) if callee_name(c) == "reportNewIncomingCall"]
            decisions = [c for c in calls(body) if callee_name(c) in ("handlePush", "classifyPush")]
            if not reports:
                self.fail(name, "the VoIP push callback never calls reportNewIncomingCall")
            if not decisions:
                self.fail(name, "the VoIP push callback does not ask the core (handlePush / classifyPush)")
                continue
            decided = max(d.end_byte for d in decisions)
            for report in reports:
                if any(a.type == "lambda_literal" for a in ancestors(report, body)):
                    self.fail(name, f"line {report.start_point[0] + 1}: reportNewIncomingCall inside a closure, Task or dispatch")
                closure = [n for n in walk(report) if n.type == "lambda_literal"]
                report_args_end = closure[0].start_byte if closure else report.end_byte
                entry = switch_entry_of(report, body)
                for between in calls(body):
                    # On this report's path: not in another case, not part
                    # of another report.
                    if switch_entry_of(between, body) not in (None, entry):
                        continue
                    if any(a in reports for a in ancestors(between, body)) or between in reports and between != report:
                        continue
                    if decided <= between.start_byte < report_args_end and between != report:
                        if callee_name(between) not in BETWEEN_DECISION_AND_REPORT:
                            self.fail(name, f"line {between.start_point[0] + 1}: `{callee_name(between)}` runs between the push decision and reportNewIncomingCall")
            for done in calls(body):
                if callee_name(done) != "completion":
                    continue
                in_report_completion = any(
                    a.type == "lambda_literal"
                    and a.parent is not None
                    and any(r for r in reports if a in list(walk(r)))
                    for a in ancestors(done, body)
                )
                entry = next((a for a in ancestors(done, body) if a.type == "switch_entry"), None)
                reports_nothing = entry is not None and not any(
                    callee_name(c) == "reportNewIncomingCall" for c in calls(entry))
                if not (in_report_completion or reports_nothing):
                    self.fail(name, f"line {done.start_point[0] + 1}: PushKit's completion called outside the report's completion")

    # -- CallKit owns the audio session ----------------------------------
    def no_set_active(self, name, tree):
        for c in calls(tree.root_node):
            if callee_name(c) != "setActive":
                continue
            functions = [text(a.child_by_field_name("name")) for a in ancestors(c, tree.root_node)
                         if a.type == "function_declaration"]
            if functions[:1] != [WITHOUT_CALLKIT]:
                self.fail(name, f"line {c.start_point[0] + 1}: setActive (CallKit activates the audio session)")

    # -- every CXAction is fulfilled or failed ---------------------------
    def actions_answered(self, name, tree):
        for fn in walk(tree.root_node):
            if fn.type != "function_declaration" or text(fn.child_by_field_name("name")) != "provider":
                continue
            signature = text(fn)[: text(fn).find("{")]
            if "perform action" not in signature:
                continue
            body = fn.child_by_field_name("body")
            answers = [c for c in calls(body) if callee_name(c) in ("fulfill", "fail")]
            if not answers:
                self.fail(name, f"line {fn.start_point[0] + 1}: provider(_:perform:) never fulfils or fails its action")
            for jump in walk(body):
                if jump.type == "control_transfer_statement" and text(jump).startswith("return"):
                    block = jump.parent
                    before = [s for s in block.children if s.end_byte <= jump.start_byte]
                    if not any(callee_name(c) in ("fulfill", "fail") for s in before for c in calls(s)):
                        self.fail(name, f"line {jump.start_point[0] + 1}: returns without fulfilling or failing the action")

    # -- Keychain ------------------------------------------------------------
    def keychain(self, name, source):
        if "SecItemAdd" in source or "SecItemUpdate" in source:
            if "kSecAttrAccessibleAfterFirstUnlock" not in source:
                self.fail(name, "Keychain items without kSecAttrAccessibleAfterFirstUnlock")
            for weaker in ("kSecAttrAccessibleWhenUnlocked", "kSecAttrAccessibleWhenPasscodeSet"):
                if weaker in source:
                    self.fail(name, f"{weaker}: a VoIP wake on a locked phone cannot read it")

    # -- Android: foreground services say their type ---------------------
    def foreground_types(self, name, tree):
        for c in calls(tree.root_node):
            if callee_name(c) != "startForeground":
                continue
            arguments = next((n for n in c.children if n.type in ("value_arguments", "call_suffix")), None)
            count = len([n for n in walk(arguments) if n.type == "value_argument"
                         and n.parent == arguments]) if arguments is not None else 0
            # Service.startForeground(id, notification, type) or
            # ServiceCompat.startForeground(service, id, notification, type).
            needed = 4 if "ServiceCompat" in text(c.children[0]) else 3
            if count < needed:
                self.fail(name, f"line {c.start_point[0] + 1}: startForeground without a foreground service type")

    # -- drift from the generated bindings -------------------------------
    def core_calls(self, name, tree, api):
        for c in calls(tree.root_node):
            method = callee_name(c)
            target = receiver(c)
            if (target is not None and CLIENT_RECEIVER.search(target) and method not in SCOPE_FUNCTIONS
                    and method not in api["client"]):
                self.fail(name, f"line {c.start_point[0] + 1}: the core's Client has no `{method}`")
            if target is None and method and method.startswith(CORE_FUNCTION_PREFIXES) and method not in api["functions"]:
                self.fail(name, f"line {c.start_point[0] + 1}: the core has no function `{method}`")
            if target is None and method == "Client":
                labels = [text(l).rstrip(":") for l in walk(c) if l.type == "value_argument_label"
                          and l.parent.parent.parent.parent == c]
                if labels and labels != api["client_init"]:
                    self.fail(name, f"line {c.start_point[0] + 1}: Client(...) labels {labels} != {api['client_init']}")
            if target is None and method in api["records"]:
                fields = api["records"][method]
                labels = argument_labels(c)
                if labels and not is_in_order(labels, fields):
                    self.fail(name, f"line {c.start_point[0] + 1}: {method}(...) labels {labels} are not "
                                    f"in the record's fields {fields}")

    def ports_implemented(self, sources, api, language):
        """Returns the ports found implemented (the caller checks it found some)."""
        implemented = set()
        conformances = set()
        for tree in sources.values():
            for n in walk(tree.root_node):
                if n.type == "function_declaration":
                    implemented.add(signature(n, language))
                if n.type in ("inheritance_specifier", "delegation_specifier"):
                    conformances.add(text(n).split("(")[0].strip())
        for port in sorted(PORTS & conformances):
            if not api["ports"].get(port):
                self.fail(f"{language} bindings", f"no methods found for the port {port}")
            for required in api["ports"].get(port, []):
                if required not in implemented:
                    self.fail(f"{language} adapter", f"{port} requires {required[0]}({', '.join(required[1])}) and nothing implements it")
        return PORTS & conformances


def signature(fn, language):
    """(name, parameter labels) of a function declaration, backticks off."""
    name = fn.child_by_field_name("name")
    labels = []
    if language == "swift":
        for param in fn.children:
            if param.type == "parameter":
                label = param.child_by_field_name("external_name") or next(
                    c for c in param.children if c.type == "simple_identifier")
                labels.append(text(label))
    else:
        params = next((c for c in fn.children if c.type == "function_value_parameters"), None)
        for param in params.children if params is not None else []:
            if param.type == "parameter":
                labels.append(text(next(c for c in param.children if c.type == "identifier")).strip("`"))
    return (text(name).strip("`") if name is not None else "", tuple(labels))


def argument_labels(call):
    """The labels (Swift) or argument names (Kotlin) of a call's own arguments."""
    labels = []
    for n in walk(call):
        if n.type == "value_argument_label" and n.parent.parent.parent.parent == call:
            labels.append(text(n).rstrip(":"))
        if (n.type == "value_argument" and n.parent.parent == call and len(n.children) > 1
                and n.children[0].type == "identifier" and n.children[1].type == "="):
            labels.append(text(n.children[0]).strip("`"))
    return labels


def is_in_order(labels, fields):
    position = 0
    for label in labels:
        if label not in fields[position:]:
            return False
        position = fields.index(label, position) + 1
    return True


def swift_api(path):
    tree = SWIFT.parse(path.read_bytes())
    api = {"client": set(), "functions": set(), "client_init": [], "ports": {}, "records": {}}
    for n in walk(tree.root_node):
        if n.type == "protocol_declaration":
            name = text(n.child_by_field_name("name"))
            methods = [signature(f, "swift") for f in walk(n) if f.type == "protocol_function_declaration"]
            if name == "ClientProtocol":
                api["client"] |= {m[0] for m in methods}
            elif name in PORTS:
                api["ports"][name] = methods
        if n.type == "function_declaration" and n.parent == tree.root_node:
            api["functions"].add(signature(n, "swift")[0])
        if n.type == "init_declaration" and "config: ClientConfig" in text(n)[:200]:
            api["client_init"] = [text(p.children[0]) for p in n.children if p.type == "parameter"]
        # UniFFI records: `public struct X { ... public init(field: T, ...) }`.
        if n.type == "class_declaration" and text(n.children[1] if n.children[0].type == "modifiers"
                                                   else n.children[0]) == "struct":
            inits = [i for i in walk(n) if i.type == "init_declaration"]
            if inits:
                api["records"][text(n.child_by_field_name("name"))] = [
                    text(p.children[0]) for p in inits[0].children if p.type == "parameter"]
    return api


def top_level_chunks(source):
    """Generated Kotlin cut before each line that starts a top-level
    declaration (a letter, `@` or `/` in column 0; bodies are indented and
    closing braces stay with their declaration). tree-sitter-kotlin cannot
    parse some of UniFFI's callback objects, and its error recovery may
    swallow every declaration after one; parsed one by one, a chunk it
    cannot read costs only itself."""
    starts = [m.start() for m in re.finditer(rb"^(?=[A-Za-z@/])", source, re.M)]
    bounds = zip([0] + starts, starts + [len(source)])
    return [source[a:b] for a, b in bounds if b > a]


def kotlin_api(path):
    api = {"client": set(), "functions": set(), "client_init": [], "ports": {}, "records": {}}
    for chunk in top_level_chunks(path.read_bytes()):
        kotlin_declarations(KOTLIN.parse(chunk), api)
    return api


def kotlin_declarations(tree, api):
    for n in walk(tree.root_node):
        if n.type == "class_declaration":
            name_node = next((c for c in n.children if c.type in ("type_identifier", "identifier")), None)
            if name_node is None:
                continue
            name = text(name_node)
            body = next((c for c in n.children if c.type == "class_body"), None)
            methods = [signature(f, "kotlin") for f in walk(body)
                       if f.type == "function_declaration" and f.parent == body] if body is not None else []
            if name == "ClientInterface":
                api["client"] |= {m[0] for m in methods}
            elif name in PORTS:
                api["ports"][name] = methods
            # UniFFI records: `data class X(var field: T, ...)`.
            if text(n).startswith("data class"):
                constructor = next((c for c in n.children if c.type == "primary_constructor"), None)
                if constructor is not None:
                    api["records"][name] = [
                        text(next(c for c in p.children if c.type == "identifier")).strip("`")
                        for p in walk(constructor) if p.type == "class_parameter"]
        if n.type == "function_declaration" and n.parent == tree.root_node:
            api["functions"].add(signature(n, "kotlin")[0])


def check(swift_files, kotlin_files, swift_bindings, kotlin_bindings):
    checker = Checker()
    s_api = swift_api(swift_bindings)
    k_api = kotlin_api(kotlin_bindings)
    s_trees = {}
    for path, source in swift_files.items():
        tree = SWIFT.parse(source.encode())
        if not checker.parses(path, tree):
            continue
        s_trees[path] = tree
        checker.pushkit(path, tree)
        checker.no_set_active(path, tree)
        checker.actions_answered(path, tree)
        checker.keychain(path, source)
        checker.core_calls(path, tree, s_api)
    swift_ports = checker.ports_implemented(s_trees, s_api, "swift")
    k_trees = {}
    for path, source in kotlin_files.items():
        tree = KOTLIN.parse(source.encode())
        if not checker.parses(path, tree):
            continue
        k_trees[path] = tree
        checker.foreground_types(path, tree)
        checker.core_calls(path, tree, k_api)
    kotlin_ports = checker.ports_implemented(k_trees, k_api, "kotlin")
    # The real adapters implement every port (the self-test's fragments not).
    if len(swift_files) > 1 and swift_ports != PORTS:
        checker.fail("swift adapter", f"ports not implemented: {sorted(PORTS - swift_ports)}")
    if len(kotlin_files) > 1 and kotlin_ports != PORTS:
        checker.fail("kotlin adapter", f"ports not implemented: {sorted(PORTS - kotlin_ports)}")
    return checker.violations


def self_test(swift_bindings, kotlin_bindings):
    """Each rule catches a broken adapter (a check that cannot fail checks nothing)."""
    handler = """
    func pushRegistry(_ r: PKPushRegistry, didReceiveIncomingPushWith payload: PKPushPayload,
                      for type: PKPushType, completion: @escaping () -> Void) {
        let decision = core?.handlePush(payload: json) ?? classifyPush(payload: json, deviceNowMs: 0, serverClockOffsetMs: nil)
        BODY
    }
    """
    broken_swift = {
        "report in a dispatch": handler.replace("BODY", """
            DispatchQueue.main.async {
                provider.reportNewIncomingCall(with: uuid, update: update) { _ in completion() }
            }"""),
        "a helper between decision and report": handler.replace("BODY", """
            logDecision(decision)
            provider.reportNewIncomingCall(with: uuid, update: update) { _ in completion() }"""),
        "completion before the report completes": handler.replace("BODY", """
            provider.reportNewIncomingCall(with: uuid, update: update) { _ in }
            completion()"""),
        "setActive": "func f() { try? AVAudioSession.sharedInstance().setActive(true) }",
        "setActive in a closure inside the no-CallKit path": """
            func activateAudioWithoutCallKit() { DispatchQueue.main.async { func g() { try? s.setActive(true) } } }""",
        "an action left unanswered": """
            func provider(_ provider: CXProvider, perform action: CXAnswerCallAction) {
                guard let c = client else { return }
                c.answer(callUuid: "x")
            }""",
        "a Keychain item locked away": "func s() { let q = [kSecAttrAccessible: kSecAttrAccessibleWhenUnlocked]; SecItemAdd(q as CFDictionary, nil) }",
        "a core method that does not exist": "func f() { client?.answerCall(callUuid: \"x\") }",
        "a record field misspelt": "func f() { _ = AudioEndpoint(id: \"s\", kind: .speaker, title: \"Speaker\") }",
        "a Client with old labels": "func f() { _ = try? Client(config: c, ui: u, media: m, audio: a, push: p) }",
        "a port method missing": "final class A: AudioRoutes { func selectAudioRoute(id: String) throws {} }",
    }
    broken_kotlin = {
        "startForeground without a type": "fun f() {\n    ServiceCompat.startForeground(service, 1, notification)\n}\n",
        "a core method that does not exist (kotlin)": "fun f() {\n    client.answerCall(\"x\")\n}\n",
        "a record field that does not exist (kotlin)":
            "fun f() {\n    DevicePushTokens(apnsVoip = null, apnsAlert = null, fcmToken = null)\n}\n",
        "a port method missing (kotlin)": "class A : Credentials {\n    override fun refresh() {}\n}\n",
    }
    failures = []
    for what, source in broken_swift.items():
        if not check({what: source}, {}, swift_bindings, kotlin_bindings):
            failures.append(f"self-test: the rules did not catch {what}")
    for what, source in broken_kotlin.items():
        if not check({}, {what: source}, swift_bindings, kotlin_bindings):
            failures.append(f"self-test: the rules did not catch {what}")
    return failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--swift-bindings", type=pathlib.Path, required=True)
    parser.add_argument("--kotlin-bindings", type=pathlib.Path, required=True)
    args = parser.parse_args()
    problems = self_test(args.swift_bindings, args.kotlin_bindings)
    swift_files = {str(p.relative_to(ROOT)): p.read_text() for p in sorted(SWIFT_SOURCES.rglob("*.swift"))}
    kotlin_files = {str(p.relative_to(ROOT)): p.read_text() for p in sorted(KOTLIN_SOURCES.rglob("*.kt"))}
    if not swift_files or not kotlin_files:
        problems.append("no adapter sources found")
    problems += check(swift_files, kotlin_files, args.swift_bindings, args.kotlin_bindings)
    for problem in problems:
        print(problem)
    if problems:
        sys.exit(1)
    print(f"adapter rules hold: {len(swift_files)} Swift and {len(kotlin_files)} Kotlin files")


if __name__ == "__main__":
    main()
