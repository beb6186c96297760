"""Drives the daemon's page in headless Chromium over the DevTools protocol, as a user
would: gives the token the page asks for, waits for the live connection's subflows, adds
a rule through the form. Prints what the page showed, as JSON, on its last line.

Usage: drive.py DEVTOOLS_PORT TOKEN RULE_DESTINATION
"""
import json
import sys
import time
import urllib.request

import websocket

port, token, destination = sys.argv[1], sys.argv[2], sys.argv[3]
deadline = time.time() + 30
page = None
while page is None:
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
    page = next((t for t in targets if t.get("type") == "page"), None)
    if page is None:
        if time.time() > deadline:
            sys.exit("no page target")
        time.sleep(0.1)
ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=10)
sequence = 0


def evaluate(expression, tolerant=False):
    global sequence
    sequence += 1
    ws.send(json.dumps({"id": sequence, "method": "Runtime.evaluate",
                        "params": {"expression": expression, "returnByValue": True}}))
    while True:
        answer = json.loads(ws.recv())
        if answer.get("id") == sequence:
            result = answer["result"]
            if "exceptionDetails" in result:
                if tolerant:
                    return None
                sys.exit(f"{expression}: {result['exceptionDetails']}")
            return result["result"].get("value")


def wait_for(what, expression, limit=15):
    end = time.time() + limit
    while time.time() < end:
        # Until the page has loaded, its elements are not there yet.
        if evaluate(expression, tolerant=True):
            return
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}; page: {evaluate('document.body.innerText')}")


text = lambda element: f"document.getElementById('{element}').textContent"

wait_for("the token prompt", "!document.getElementById('token-section').hidden")
evaluate(f"document.getElementById('token').value = {json.dumps(token)};"
         "document.getElementById('token-form').requestSubmit(); true")
wait_for("a live connection's subflow", f"{text('connections')}.includes('MB')")
evaluate(f"document.getElementById('rule-ip').value = {json.dumps(destination)};"
         "document.getElementById('rule-mptcp').checked = false;"
         "document.getElementById('rule-form').requestSubmit(); true")
wait_for("the saved rule", f"{text('rules')}.includes({json.dumps(destination)})")
wait_for("the doctor", f"{text('doctor')}.length > 0")
print(json.dumps({
    "connections": evaluate(text("connections")),
    "rules": evaluate(text("rules")),
    "rule_message": evaluate(text("rule-error")),
    "legend": evaluate(text("legend")),
    "doctor": evaluate(text("doctor")),
}))
