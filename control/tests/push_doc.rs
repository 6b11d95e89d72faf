//! The webhook verifier PUSH.md gives app backends is run as written, under
//! Node, against signatures made by our sender: it accepts ours and refuses
//! an altered body, a replay outside the window and a foreign secret.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use control::push::webhook::sign;

/// The first ```js block of PUSH.md.
fn documented_verifier() -> String {
    let doc = include_str!("../PUSH.md");
    let start = doc.find("```js\n").expect("PUSH.md has a ```js block") + "```js\n".len();
    let len = doc[start..].find("```").expect("the block ends");
    doc[start..start + len].to_string()
}

#[test]
fn the_documented_node_verifier_accepts_our_signature_and_refuses_tampering_and_replays() {
    let dir = std::env::temp_dir().join(format!("switchboard-push-doc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("verify.mjs"), documented_verifier()).unwrap();
    std::fs::write(
        dir.join("check.mjs"),
        r#"import { verify } from "./verify.mjs";
const [secret, header, stale, body, now] = JSON.parse(process.argv[2]);
const raw = Buffer.from(body);
console.log(JSON.stringify([
  verify(secret, header, raw, now),
  verify(secret, header, Buffer.from(body.replace("alice", "mallory")), now),
  verify(secret, stale, raw, now),
  verify("another-secret", header, raw, now),
]));
"#,
    )
    .unwrap();
    let secret = "webhook-secret-webhook-secret-0123";
    let body = r#"{"userId":"bob","payload":{"event":"incoming_call","fromUserId":"alice"}}"#;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let fresh = sign(secret, now, body.as_bytes());
    let stale = sign(secret, now - 301, body.as_bytes());
    let args = serde_json::json!([secret, fresh, stale, body, now]).to_string();
    let out = Command::new("node")
        .arg(dir.join("check.mjs"))
        .arg(args)
        .output()
        .expect("node must be installed (./scripts/test installs it)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<bool> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        verdicts,
        [true, false, false, false],
        "ours, altered, replayed, foreign"
    );
}
