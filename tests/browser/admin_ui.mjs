// Drives the admin page in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core): sign in, file a forget request, watch it complete once the dependent
// acknowledges (with the stream holding the subject's personal fields listed), look up a
// subject's bound streams and streams holding its personal fields, place a hold and see a
// forget refused, check the audit trail's verification, and see the request in the report;
// then set a retention policy (a malformed period refused with the server's reason), see it
// listed, sweep it, see the request it filed with its origin and the report's retention
// figures, and remove it. Saves screenshots as test artifacts.
//
// Usage: node admin_ui.mjs <base url> <admin token> <screenshot dir>
// Run by tests/it/admin_ui.rs against a fresh server; exits non-zero on the first failure.

import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";

const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

const [base, token, outDir] = process.argv.slice(2);
if (!base || !token || !outDir) {
  console.error("usage: node admin_ui.mjs <base url> <admin token> <screenshot dir>");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });
const TIMEOUT = 15000;

/** The API, as a dependent service and a writer would use it (setup and acknowledgement). */
async function api(method, path, body) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/**
 * Runs axe-core (WCAG 2 A/AA rules) on the page as it is now; fails on any serious or critical
 * violation. Evaluated through the DevTools protocol, so the page's CSP does not block it.
 */
async function accessible(page, where) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() =>
    window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa"] } }));
  const serious = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(
    serious.length === 0,
    `${where}: no serious accessibility violations ${serious.length
      ? JSON.stringify(serious.map((v) => ({ id: v.id, nodes: v.nodes.map((n) => n.target) })))
      : ""}`,
  );
}

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok - ${message}`);
}

const browser = await chromium.launch({
  executablePath: process.env.LETHE_CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
  ],
});
const problems = [];
let exitCode = 0;
const page = await browser.newPage({ viewport: { width: 1366, height: 860 } });
page.setDefaultTimeout(TIMEOUT);
page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
page.on("console", (message) => {
  // A 400/401/403/409 answer is logged by Chromium as a failed resource load; those are
  // expected (400: the malformed retention period the test submits on purpose).
  if (message.type() === "error" && !/status of 40[0139]/.test(message.text())) {
    problems.push(`console error: ${message.text()}`);
  }
});

try {
  // Setup: a service that must acknowledge erasures, and a subject with personal data.
  await api("PUT", "/consumers/ledger", { erasure_dependent: true });
  for (const subject of ["ui-1", "ui-2"]) {
    await api("POST", `/streams/user-private-${subject}`, {
      expected_version: "any",
      subject,
      events: [{ type: "SignedUp", data: { email: `${subject}@example.com` } }],
    });
  }
  // A public stream whose event names both subjects, each name a personal field of its own.
  await api("PUT", "/schemas/MoneyTransferred", {
    schema: {
      type: "object",
      properties: {
        sender_id: { type: "string" },
        sender_name: { type: "string", "x-lethe-personal": { subject: "/sender_id" }, "x-lethe-erased": "[erased]" },
        receiver_id: { type: "string" },
        receiver_name: { type: "string", "x-lethe-personal": { subject: "/receiver_id" } },
        amount: { type: "number" },
      },
      required: ["sender_id", "receiver_id", "amount"],
    },
  });
  // A subject whose only data is a session stream: what the retention policy will cover.
  await api("POST", "/streams/session-ui-3", {
    expected_version: "any",
    subject: "ui-3",
    events: [{ type: "SessionStarted", data: { ip: "192.0.2.3" } }],
  });
  await api("POST", "/streams/transfers-ui", {
    expected_version: "any",
    events: [{
      type: "MoneyTransferred",
      data: { sender_id: "ui-1", sender_name: "Ann", receiver_id: "ui-2", receiver_name: "Bob", amount: 5 },
    }],
  });

  await page.goto(`${base}/admin/ui`);
  check((await page.title()) === "Lethe admin", "the page loads");
  await accessible(page, "sign-in");

  // A wrong token is refused with a message; the right one signs in.
  await page.getByLabel("Admin token").fill("not-a-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("This token is not valid.").waitFor();
  check(true, "a wrong token is refused");
  await page.getByLabel("Admin token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Erasure requests" }).waitFor();
  check(true, "signed in");

  // File a forget request for ui-1.
  await page.getByRole("button", { name: "File a request" }).click();
  await page.getByLabel("Subject id (pseudonym)").fill("ui-1");
  await page.getByLabel("Requested by").fill("DPO office");
  await page.getByLabel("Reference (optional)").fill("ticket-42");
  await page.getByRole("button", { name: "Forget this subject" }).click();
  const detail = page.locator("#erasure-detail");
  await page.locator("#erasure-detail[data-status='awaiting_acknowledgements']").waitFor();
  check(true, "the request was filed and waits for the ledger's acknowledgement");
  check(
    (await detail.getByText("Waiting for ledger to acknowledge.").count()) === 1,
    "the timeline shows the waiting dependent",
  );
  check(
    (await page.locator("#erasure-table tbody tr").count()) === 1,
    "the request is listed",
  );
  await page.screenshot({ path: join(outDir, "erasure-waiting.png"), fullPage: true });

  // The ledger service erases what it derived and acknowledges the tombstone.
  const batch = await api("GET", "/consumers/ledger/events?limit=100&wait_ms=0");
  const tombstone = batch.events.find((e) => e.type === "$erased");
  check(tombstone !== undefined, "the ledger received the tombstone");
  await api("POST", "/consumers/ledger/ack", { position: batch.events[batch.events.length - 1].position });

  // The page refreshes by itself and shows the request completed.
  await page.locator("#erasure-detail[data-status='completed']").waitFor();
  check((await detail.getByText("Acknowledged by ledger.").count()) === 1, "the acknowledgement is on the timeline");
  check((await detail.getByText("Completed.").count()) === 1, "the request completed");
  check(
    (await detail.locator("dd", { hasText: "transfers-ui" }).count()) === 1,
    "the request lists the stream holding the subject's personal fields",
  );
  const transfer = (await api("GET", "/streams/transfers-ui")).events[0];
  check(
    transfer.data.sender_name === "[erased]" && transfer.data.receiver_name === "Bob",
    "the forgotten sender's name reads as erased, the receiver's is intact",
  );
  check(
    (await page.locator("#erasure-table tbody tr .status.completed").count()) === 1,
    "the list shows it completed",
  );
  await page.screenshot({ path: join(outDir, "erasure-completed.png"), fullPage: true });
  await accessible(page, "erasure requests");

  // Filter the list by status.
  await page.getByLabel("Status").selectOption("refused");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.locator("#erasure-empty:not([hidden])").waitFor();
  check(true, "filtering by status narrows the list");

  // A legal hold on ui-2 makes its forget request refused; lifting it allows forgetting.
  await page.getByRole("button", { name: "Subjects & holds" }).click();
  await page.getByLabel("Subject id", { exact: true }).fill("ui-2");
  await page.getByRole("button", { name: "Look up" }).click();
  await page.getByText("No legal hold: this subject can be forgotten.").waitFor();
  check((await page.locator("#subject-streams").getByText("user-private-ui-2").count()) === 1, "its stream is listed");
  check(
    (await page.locator("#subject-field-streams").getByText("transfers-ui").count()) === 1,
    "the stream holding its personal fields is listed",
  );
  await page.screenshot({ path: join(outDir, "subject.png"), fullPage: true });
  await accessible(page, "subject");
  await page.getByLabel("Hold reason").fill("litigation 2026-17");
  await page.getByRole("button", { name: "Place hold" }).click();
  await page.getByText(/Legal hold since .*: litigation 2026-17/).waitFor();
  check(true, "a hold was placed");
  await page.getByRole("button", { name: "File a request" }).click();
  await page.getByLabel("Subject id (pseudonym)").fill("ui-2");
  await page.getByLabel("Requested by").fill("DPO office");
  await page.getByRole("button", { name: "Forget this subject" }).click();
  await page.locator("#forget-result").getByText(/^Refused:/).waitFor();
  check(true, "forgetting a subject under hold is refused");
  await accessible(page, "file a request");

  // The audit trail verifies and shows what was done, by whom.
  await page.getByRole("button", { name: "Audit trail" }).click();
  await page.locator("#audit-verify.ok").waitFor();
  check((await page.locator("#audit-verify").textContent()).startsWith("Chain intact"), "the audit chain verifies");
  const actions = await page.locator("#audit-table tbody td:nth-child(4)").allTextContents();
  for (const action of ["erasure_requested", "erasure_completed", "hold_placed", "erasure_refused", "consumer_registered", "schema_registered"]) {
    check(actions.includes(action), `the trail records ${action}`);
  }
  await page.screenshot({ path: join(outDir, "audit.png"), fullPage: true });
  await accessible(page, "audit trail");

  // The report counts the requests and charts them.
  await page.getByRole("button", { name: "Report" }).click();
  await page.locator("#report-summary [data-figure='Requests'] dd").waitFor();
  const figure = (name) => page.locator(`#report-summary [data-figure='${name}'] dd`).textContent();
  check((await figure("Requests")) === "2", "the report counts two requests");
  check((await figure("Completed")) === "1", "one completed");
  check((await figure("Refused")) === "1", "one refused");
  check((await figure("Holds active")) === "1", "one hold active");
  check((await page.locator("#chart-requests rect.bar").count()) >= 1, "the weekly chart has a bar");
  check(
    /1 completed/.test(await page.locator("#chart-requests-desc").textContent()),
    "the chart's description reads the week's figures",
  );
  await page.screenshot({ path: join(outDir, "report.png"), fullPage: true });
  await accessible(page, "report");

  // Retention: a malformed period is refused with the server's reason and nothing is stored.
  await page.getByRole("button", { name: "Retention", exact: true }).click();
  await page.locator("#retention-empty:not([hidden])").waitFor();
  check(true, "no retention policy yet");
  await page.getByLabel("Policy name").fill("sessions");
  await page.getByLabel("Stream prefix").fill("session-");
  await page.getByLabel("Keep for").fill("P-1D");
  await page.getByRole("button", { name: "Save policy" }).click();
  await page.locator("#retention-result.error").getByText(/^Not saved: .*keep_for/).waitFor();
  check(true, "a negative period is refused with the problem's detail");
  check((await page.locator("#retention-table tbody tr").count()) === 0, "nothing was stored");
  check((await api("GET", "/admin/retention")).policies.length === 0, "the API lists no policy either");

  // A valid policy is created and listed with its fields and when it is next due (ui-3's
  // session stream, 30 days after its first event).
  await page.getByLabel("Keep for").fill("P30D");
  await page.getByLabel("Counted from").selectOption("first_event");
  await page.getByRole("button", { name: "Save policy" }).click();
  await page.locator("#retention-result").getByText("Policy sessions created.").waitFor();
  const policyRow = page.locator("#retention-table tbody tr[data-policy='sessions']");
  await policyRow.waitFor();
  const cells = await policyRow.locator("td").allTextContents();
  check(
    cells[0] === "sessions" && cells[1] === "session-" && cells[2] === "P30D" && cells[3] === "first event",
    `the policy is listed with its fields ${JSON.stringify(cells)}`,
  );
  check(/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC$/.test(cells[4]), `its next due time is shown (${cells[4]})`);
  check((await api("GET", "/admin/retention/sessions")).after === "first_event", "the API has what the page set");
  await page.screenshot({ path: join(outDir, "retention.png"), fullPage: true });
  await accessible(page, "retention");

  // Replaced by one whose period has passed: a sweep files an erasure request for ui-3 (or the
  // background sweep did already), shown with the policy as its origin.
  await page.getByLabel("Policy name").fill("sessions");
  await page.getByLabel("Stream prefix").fill("session-");
  await page.getByLabel("Keep for").fill("PT1S");
  await page.getByRole("button", { name: "Save policy" }).click();
  await page.locator("#retention-result").getByText("Policy sessions replaced.").waitFor();
  await page.locator("#retention-table tbody tr[data-policy='sessions'] td", { hasText: "PT1S" }).waitFor();
  check(true, "the policy is replaced");
  await page.getByRole("button", { name: "Sweep now" }).click();
  await page.locator("#retention-sweep-result").getByText(/^Swept 1 policy:/).waitFor();
  check(true, "the sweep ran");
  await page.getByRole("button", { name: "Erasure requests" }).click();
  await page.getByLabel("Status").selectOption({ label: "any" });
  await page.getByRole("button", { name: "Filter" }).click();
  const retentionRow = page.locator("#erasure-table tbody tr", { hasText: "subject ui-3" });
  await retentionRow.waitFor();
  check((await retentionRow.locator("td.origin").textContent()) === "policy sessions", "its origin is the policy");
  check(
    (await page.locator("#erasure-table tbody tr", { hasText: "subject ui-1" }).locator("td.origin").textContent()) === "request",
    "a person's request shows its origin as a request",
  );
  await retentionRow.getByRole("button").click();
  await page.locator("#detail-facts dd", { hasText: "Retention policy sessions" }).waitFor();
  check(true, "the request's detail names the policy");

  // The report counts requests by origin and lists the policy.
  await page.getByRole("button", { name: "Report" }).click();
  await page.locator("#report-retention tbody tr[data-policy='sessions']").waitFor();
  check((await figure("Requests")) === "3", "the report counts three requests");
  check((await figure("Filed on request")) === "2", "two filed on request");
  check((await figure("Filed by retention policies")) === "1", "one filed by a retention policy");
  const reportCells = await page.locator("#report-retention tbody tr[data-policy='sessions'] td").allTextContents();
  check(reportCells[1] === "1", `the policy filed one request in the period ${JSON.stringify(reportCells)}`);
  await page.screenshot({ path: join(outDir, "report-retention.png"), fullPage: true });
  await accessible(page, "report with retention");

  // Removed through the page.
  await page.getByRole("button", { name: "Retention", exact: true }).click();
  await page.getByRole("button", { name: "Remove the retention policy sessions" }).click();
  await page.locator("#retention-empty:not([hidden])").waitFor();
  check((await page.locator("#retention-table tbody tr").count()) === 0, "the policy is removed from the list");
  check((await api("GET", "/admin/retention")).policies.length === 0, "and from the server");
  await page.getByRole("button", { name: "Audit trail" }).click();
  await page.locator("#audit-verify.ok").waitFor();
  const retentionActions = await page.locator("#audit-table tbody td:nth-child(4)").allTextContents();
  for (const action of ["retention_policy_set", "retention_erasure_filed", "retention_policy_removed"]) {
    check(retentionActions.includes(action), `the trail records ${action}`);
  }

  check(problems.length === 0, `no script errors on the page ${problems.length ? JSON.stringify(problems) : ""}`);
} catch (error) {
  console.error(`FAILED: ${error.message}`);
  if (problems.length) console.error(problems.join("\n"));
  await page.screenshot({ path: join(outDir, "failure.png"), fullPage: true }).catch(() => {});
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
