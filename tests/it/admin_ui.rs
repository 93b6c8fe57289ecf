//! The admin page (`/admin/ui`): served from the binary with a strict content security policy
//! and no outside resources, and working end to end in a real browser — headless Chromium
//! driven by `tests/browser/admin_ui.mjs` (playwright-core): sign in, file a forget request,
//! watch it complete, place a hold, check the audit trail and the report. Screenshots land
//! in `<target>/tmp/admin-ui/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::http_support::Server;
use crate::support::TestDb;

#[tokio::test]
async fn admin_page_is_self_contained_and_locked_down() {
    let db = TestDb::sqlite().await;
    let server = Server::start(&db).await;
    for (path, content_type) in [
        ("/admin/ui", "text/html"),
        ("/admin/ui/app.js", "text/javascript"),
        ("/admin/ui/app.css", "text/css"),
    ] {
        let reply = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(reply.status(), 200, "{path} needs no token");
        let header = |name: &str| {
            reply
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        let csp = header("content-security-policy");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff");
        let body = reply.text().await.unwrap();
        // Nothing is fetched from elsewhere (no CDN): no absolute URL in src/href/url()/fetch.
        for outside in ["src=\"http", "href=\"http", "url(http", "fetch(\"http", "//cdn"] {
            assert!(!body.contains(outside), "{path} loads {outside}");
        }
        // Data is rendered with DOM calls, never parsed as markup.
        assert!(!body.contains("innerHTML"), "{path} uses innerHTML");
    }
    server.stop().await;
}

/// What the browser test needs: Node.js, `tests/browser/node_modules` (`npm ci` there) and
/// Debian's Chromium. `.ci/run` installs them and sets `LETHE_TEST_BROWSER=1`, which makes a
/// missing piece a failure instead of a skip.
fn browser_tooling() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("LETHE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (!node).then_some("node"),
        (!dir.join("node_modules/playwright-core").exists()).then_some("tests/browser/node_modules (npm ci)"),
        (!Path::new(&chromium).exists()).then_some("chromium"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("LETHE_TEST_BROWSER").is_none(),
        "LETHE_TEST_BROWSER is set but the browser test cannot run: missing {missing:?}"
    );
    eprintln!("admin page browser test skipped: missing {missing:?} (set LETHE_TEST_BROWSER=1 to require it)");
    None
}

#[tokio::test]
async fn admin_page_works_in_headless_chromium() {
    let Some(dir) = browser_tooling() else {
        return;
    };
    let db = TestDb::sqlite().await;
    let server = Server::start(&db).await;
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-ui");
    let _ = std::fs::remove_dir_all(&screenshots);
    let out = tokio::process::Command::new("node")
        .arg(dir.join("admin_ui.mjs"))
        .arg(&server.base)
        .arg(&server.admin)
        .arg(&screenshots)
        .current_dir(&dir)
        .output()
        .await
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser test failed:\n{log}");
    for shot in [
        "erasure-waiting.png",
        "erasure-completed.png",
        "audit.png",
        "report.png",
    ] {
        let png = std::fs::read(screenshots.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{shot} is a PNG");
    }
    eprintln!("{log}admin page screenshots: {}", screenshots.display());
    server.stop().await;
}
