// The pushy web dashboard: a small single-page app on the server's own REST, SSE and websocket
// API, authenticated by the session cookie a one-time log-in link opened (docs/dashboard.md).
// No build step and no library: plain DOM, built with `h` (never from HTML strings, so nothing
// a node or a job prints can become markup).
"use strict";

const LIVE_STATUSES = new Set(["new", "voting", "running"]);
const STARTED = new Set(["running", "succeeded", "failed", "aborted", "crashed", "timed_out"]);
const RETRY_MS = [1000, 2000, 5000, 10000, 30000];

const app = {
  session: null, // GET /pushy/dashboard/session
  nodes: new Map(), // online nodes: name -> availability (websocket)
  ws: null,
  wsRetry: 0,
  view: null, // the current page: {name, stop(), onNodes()}
};

// ------------------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function badge(status) {
  return h("span", { class: `badge s-${status}`, dataset: { status } }, status);
}

function orgPath(rest) {
  return `/organizations/${encodeURIComponent(app.session.org)}/pushy/${rest}`;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function errorText(body, status) {
  const err = body && body.error;
  if (Array.isArray(err)) return err.join("; ");
  if (typeof err === "string") return err;
  return `HTTP ${status}`;
}

// One call of the API: the cookie goes by itself; writes carry the CSRF token.
async function api(method, path, body, accept = "application/json") {
  const headers = { Accept: accept };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (method !== "GET") headers["X-CSRF-Token"] = app.session ? app.session.csrf_token : "";
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (accept !== "application/json" && response.ok) return response.text();
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (response.status === 401 && app.session && !path.startsWith("/pushy/dashboard/")) {
    loggedOut("Your session has ended. Ask for a new log-in link.");
  }
  if (!response.ok) throw new ApiError(response.status, errorText(data, response.status));
  return data;
}

function notice(text, kind = "error") {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.className = `notice ${kind}`;
  el.hidden = !text;
}

function main(...children) {
  const el = document.getElementById("main");
  el.replaceChildren(...children);
  return el;
}

function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

// ------------------------------------------------------------------------------ log-in

async function start() {
  document.getElementById("logout").addEventListener("click", logout);
  // a log-in link opened in a tab that shows the dashboard already: start over with it
  window.addEventListener("hashchange", () => {
    if (location.hash.startsWith("#login=")) location.reload();
  });
  const hash = location.hash;
  if (hash.startsWith("#login=")) {
    // the token came in the fragment (never sent to a server); spend it, then forget it
    history.replaceState(null, "", "/#/nodes");
    try {
      app.session = await api("POST", "/pushy/dashboard/session", { token: hash.slice(7) });
    } catch (err) {
      loggedOut(`This log-in link cannot be used: ${err.message}`);
      return;
    }
  } else {
    try {
      app.session = await api("GET", "/pushy/dashboard/session");
    } catch (err) {
      loggedOut(err.status === 401 ? "" : err.message);
      return;
    }
  }
  loggedIn();
}

function loggedIn() {
  const s = app.session;
  document.getElementById("who").textContent = `${s.user} · ${s.org}${
    s.can_write ? "" : " · read only"
  }`;
  document.getElementById("nav").hidden = false;
  document.getElementById("nav-start").hidden = !s.can_write;
  document.getElementById("logout").hidden = false;
  window.addEventListener("hashchange", route);
  connectWs();
  route();
}

function loggedOut(message) {
  if (app.view) app.view.stop();
  app.view = null;
  app.session = null;
  if (app.ws) {
    app.ws.onclose = null;
    app.ws.close();
    app.ws = null;
  }
  window.removeEventListener("hashchange", route);
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("live").hidden = true;
  document.getElementById("who").textContent = "";
  notice("");
  main(
    h(
      "section",
      { class: "panel login", id: "login" },
      h("h1", {}, "Log in to pushy"),
      message ? h("p", { class: "error" }, message) : null,
      h("p", {}, "The dashboard never asks for a key. An administrator (or you, with your own key) makes a one-time link:"),
      h("pre", {}, "pushy admin login-link USER [--org ORG] [--ttl SECONDS]"),
      h("p", {}, "Open the printed URL in this browser within its lifetime (5 minutes by default); it works once."),
    ),
  );
}

async function logout() {
  try {
    await api("DELETE", "/pushy/dashboard/session");
  } catch (err) {
    // a session that had already ended: logged out all the same
  }
  loggedOut("You have logged out.");
}

// ------------------------------------------------------------------------------ websocket

// Node availability, live: the hello lists the online nodes, then each change comes.
function connectWs() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}${orgPath("ws")}`);
  app.ws = ws;
  const live = document.getElementById("live");
  ws.onopen = () => ws.send(JSON.stringify({ subscribe: { jobs: [], nodes: true } }));
  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "hello") {
      app.wsRetry = 0;
      app.nodes = new Map(Object.entries(message.nodes));
      live.hidden = false;
      live.textContent = "live";
      live.className = "live on";
    } else if (message.type === "node") {
      if (message.status === "offline") app.nodes.delete(message.node);
      else app.nodes.set(message.node, message.availability);
    } else {
      return;
    }
    if (app.view && app.view.onNodes) app.view.onNodes();
  };
  ws.onclose = () => {
    if (app.ws !== ws) return;
    live.textContent = "reconnecting";
    live.className = "live off";
    const wait = RETRY_MS[Math.min(app.wsRetry, RETRY_MS.length - 1)];
    app.wsRetry += 1;
    setTimeout(async () => {
      if (app.ws !== ws) return;
      try {
        await api("GET", "/pushy/dashboard/session"); // a refused handshake: has it ended?
      } catch (err) {
        if (err.status === 401) return loggedOut("Your session has ended. Ask for a new log-in link.");
      }
      if (app.ws === ws) connectWs();
    }, wait);
  };
}

// ------------------------------------------------------------------------------ routing

function route() {
  if (!app.session) return;
  if (app.view) app.view.stop();
  notice("");
  const hash = location.hash || "#/nodes";
  let view;
  let match;
  if ((match = hash.match(/^#\/jobs\/([0-9a-f]{32})$/))) view = jobView(match[1]);
  else if (hash === "#/jobs") view = jobsView();
  else if (hash.startsWith("#/start")) view = startView(new URLSearchParams(hash.split("?")[1] || ""));
  else view = nodesView();
  app.view = view;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.page === view.name);
  }
}

// ------------------------------------------------------------------------------ nodes

function nodesView() {
  let matched = null; // node names of the last search, or null: the online nodes
  let query = "";
  const input = h("input", {
    type: "search",
    id: "node-query",
    name: "q",
    placeholder: "Chef search query, e.g. role:web AND chef_environment:prod",
    "aria-label": "search query",
  });
  const table = h("tbody", { id: "nodes-body" });
  const summary = h("p", { class: "muted", id: "nodes-summary" });
  const startLink = h("a", { class: "button", id: "start-on-nodes", hidden: true }, "Start a job on these nodes");

  async function search(event) {
    event.preventDefault();
    query = input.value.trim();
    notice("");
    if (!query) {
      matched = null;
      return render();
    }
    try {
      const q = new URLSearchParams({ q: query, rows: "1000", sort: "name asc" });
      const body = await api("GET", `/organizations/${encodeURIComponent(app.session.org)}/search/node?${q}`);
      matched = body.rows.map((row) => row.name);
    } catch (err) {
      notice(`Search failed: ${err.message}`);
      matched = [];
    }
    render();
  }

  function render() {
    const names = matched === null ? [...app.nodes.keys()].sort() : matched;
    table.replaceChildren(
      ...names.map((name) => {
        const availability = app.nodes.get(name) || "offline";
        return h(
          "tr",
          { dataset: { node: name } },
          h("td", {}, name),
          h("td", {}, badge(availability)),
        );
      }),
    );
    const available = names.filter((n) => app.nodes.get(n) === "available").length;
    summary.textContent =
      matched === null
        ? `${names.length} online, ${available} available`
        : `${names.length} matching “${query}”, ${available} available`;
    if (!names.length) {
      table.append(h("tr", {}, h("td", { colspan: 2, class: "muted" }, matched === null ? "No node is online." : "No node matches.")));
    }
    const canStart = app.session.can_write && names.length > 0;
    startLink.hidden = !canStart;
    if (canStart) {
      const params = matched === null ? { nodes: names.join(",") } : { query };
      startLink.setAttribute("href", `#/start?${new URLSearchParams(params)}`);
    }
  }

  main(
    h("h1", {}, "Nodes"),
    h("form", { class: "searchbar", id: "node-search", onsubmit: search }, input, h("button", { type: "submit" }, "Search")),
    summary,
    h("table", { class: "grid", id: "nodes" }, h("thead", {}, h("tr", {}, h("th", {}, "Node"), h("th", {}, "Availability"))), table),
    startLink,
  );
  render();
  return { name: "nodes", stop() {}, onNodes: render };
}

// ------------------------------------------------------------------------------ jobs

function jobsView() {
  const body = h("tbody", { id: "jobs-body" });
  let stopped = false;
  async function load() {
    try {
      const jobs = await api("GET", orgPath("jobs"));
      if (stopped) return;
      body.replaceChildren(
        ...jobs.map((job) =>
          h(
            "tr",
            { dataset: { job: job.id } },
            h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id)),
            h("td", {}, job.command),
            h("td", {}, badge(job.status)),
            h("td", {}, job.created_at),
            h("td", {}, job.updated_at),
          ),
        ),
      );
      if (!jobs.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No job yet.")));
    } catch (err) {
      notice(`Cannot list the jobs: ${err.message}`);
    }
  }
  const reload = debounce(load, 200);
  // the org feed: every job's start and end, live
  const feed = new EventSource(orgPath("job_status_feed"));
  feed.addEventListener("start", reload);
  feed.addEventListener("job_complete", reload);
  main(
    h("h1", {}, "Jobs"),
    h(
      "table",
      { class: "grid", id: "jobs" },
      h("thead", {}, h("tr", {}, ["Job", "Command", "Status", "Created", "Updated"].map((t) => h("th", {}, t)))),
      body,
    ),
  );
  load();
  return {
    name: "jobs",
    stop() {
      stopped = true;
      feed.close();
    },
  };
}

// ------------------------------------------------------------------------------ one job

function jobView(id) {
  let stopped = false;
  let job = null;
  let feed = null;
  const outputs = new Map(); // "node/stream" -> {text, bytes, pre}
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const head = h("div", { class: "jobhead" });
  const nodesBody = h("tbody", { id: "job-nodes" });
  const outputBox = h("div", { id: "outputs" });
  const abortButton = h("button", { type: "button", id: "abort", class: "danger", hidden: true, onclick: abort }, "Abort");

  function outputFor(node, stream) {
    const key = `${node}/${stream}`;
    let out = outputs.get(key);
    if (!out) {
      const pre = h("pre", { class: `output ${stream}`, dataset: { node, stream } });
      out = { text: "", bytes: 0, pre, fetching: false };
      outputs.set(key, out);
      outputBox.append(h("section", { class: "node-output" }, h("h3", {}, `${node} `, h("span", { class: "muted" }, stream)), pre));
    }
    return out;
  }

  function setText(out, text) {
    out.text = text;
    out.bytes = encoder.encode(text).length;
    out.pre.textContent = text;
    out.pre.scrollTop = out.pre.scrollHeight;
  }

  async function fetchOutput(node, stream) {
    const out = outputFor(node, stream);
    if (out.fetching) return;
    out.fetching = true;
    try {
      const path = orgPath(`jobs/${id}/output/${encodeURIComponent(node)}/${stream}`);
      const text = await api("GET", path, undefined, "application/octet-stream");
      if (encoder.encode(text).length >= out.bytes) setText(out, text);
    } catch (err) {
      // 404: nothing captured yet for this node
    } finally {
      out.fetching = false;
    }
  }

  // A live output chunk: appended where it belongs (offset in bytes); a gap refetches.
  function onOutput(event) {
    const data = JSON.parse(event.data);
    const out = outputFor(data.node, data.stream);
    const chunk = encoder.encode(data.data);
    if (data.offset > out.bytes) return fetchOutput(data.node, data.stream);
    if (data.offset + chunk.length <= out.bytes) return;
    setText(out, out.text + decoder.decode(chunk.subarray(out.bytes - data.offset)));
  }

  function renderJob() {
    const details = job.node_details || {};
    const live = LIVE_STATUSES.has(job.status);
    const facts = [
      ["Command", job.command],
      ["Status", badge(job.status)],
      ["Created", job.created_at],
      ["Updated", job.updated_at],
      ["Run timeout", `${job.run_timeout} s`],
      ["Output captured", job.capture_output ? "yes" : "no"],
    ];
    if (job.max_concurrency !== undefined) facts.push(["Max concurrency", job.max_concurrency]);
    if (job.max_errors !== undefined) facts.push(["Max errors", job.max_errors]);
    if (job.stopped_by) facts.push(["Stopped by", job.stopped_by]);
    head.replaceChildren(h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    head.querySelector("dd .badge").id = "job-status";
    abortButton.hidden = !(live && app.session.can_write);
    const rows = [];
    for (const [status, names] of Object.entries(job.nodes || {})) {
      for (const name of names) rows.push([name, status]);
    }
    rows.sort((a, b) => (a[0] < b[0] ? -1 : 1));
    nodesBody.replaceChildren(
      ...rows.map(([name, status]) => {
        const d = details[name] || {};
        const note = [
          d.exit_status !== null && d.exit_status !== undefined ? `exit ${d.exit_status}` : null,
          d.signal,
          d.reason,
        ].filter(Boolean).join(" · ");
        return h("tr", { dataset: { node: name } }, h("td", {}, name), h("td", {}, badge(status)), h("td", {}, note));
      }),
    );
    if (job.capture_output) {
      for (const [name, status] of rows) {
        if (!STARTED.has(status)) continue;
        for (const stream of ["stdout", "stderr"]) {
          if (!outputs.has(`${name}/${stream}`) || !live) fetchOutput(name, stream);
        }
      }
    }
  }

  async function load() {
    try {
      job = await api("GET", orgPath(`jobs/${id}`));
    } catch (err) {
      notice(`Cannot show job ${id}: ${err.message}`);
      return;
    }
    if (stopped) return;
    renderJob();
    if (!LIVE_STATUSES.has(job.status) && feed) {
      feed.close();
      feed = null;
    }
  }
  const reload = debounce(load, 150);

  async function abort() {
    abortButton.disabled = true;
    try {
      job = await api("POST", orgPath(`jobs/${id}/abort`));
      renderJob();
      notice("The job was aborted.", "info");
    } catch (err) {
      notice(`Abort refused: ${err.message}`);
    } finally {
      abortButton.disabled = false;
    }
  }

  main(
    h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")),
    h("h1", {}, "Job ", h("span", { class: "mono" }, id)),
    head,
    abortButton,
    h("h2", {}, "Nodes"),
    h("table", { class: "grid" }, h("thead", {}, h("tr", {}, h("th", {}, "Node"), h("th", {}, "Status"), h("th", {}, "Result"))), nodesBody),
    h("h2", {}, "Output"),
    outputBox,
  );
  load().then(() => {
    if (stopped || !job || !LIVE_STATUSES.has(job.status)) return;
    // the job's feed: its events (nodes voting, running, done) and its live output
    feed = new EventSource(orgPath(`job_status_feed/${id}`));
    feed.addEventListener("output", onOutput);
    for (const name of ["quorum_vote", "quorum_succeeded", "run_start", "run_complete", "rehab", "rollout_stopped"]) {
      feed.addEventListener(name, reload);
    }
    for (const name of ["job_complete", "summary"]) {
      feed.addEventListener(name, () => {
        if (feed) feed.close(); // the stream ends here: EventSource would reconnect
        feed = null;
        load();
      });
    }
  });
  return {
    name: "jobs",
    stop() {
      stopped = true;
      if (feed) feed.close();
    },
  };
}

// ------------------------------------------------------------------------------ start a job

function startView(params) {
  if (!app.session.can_write) {
    main(h("h1", {}, "Start a job"), h("p", { class: "panel" }, "You may see jobs and nodes, but not start jobs (ask to be made a member of pushy_job_writers)."));
    return { name: "start", stop() {} };
  }
  const field = (label, input, help) =>
    h("label", { class: "field" }, h("span", {}, label), input, help ? h("small", { class: "muted" }, help) : null);
  const commands = h("datalist", { id: "commands" }, h("option", { value: "chef-client" }));
  const command = h("input", { name: "command", id: "command", list: "commands", required: true, autocomplete: "off", placeholder: "chef-client" });
  const byNodes = h("input", { type: "radio", name: "target", value: "nodes", id: "target-nodes", checked: !params.get("query") });
  const byQuery = h("input", { type: "radio", name: "target", value: "query", id: "target-query", checked: !!params.get("query") });
  const nodes = h("input", { name: "nodes", id: "nodes-input", placeholder: "web1, web2", value: params.get("nodes") || "" });
  const query = h("input", { name: "query", id: "query-input", placeholder: "role:web AND chef_environment:prod", value: params.get("query") || "" });
  const quorum = h("input", { name: "quorum", id: "quorum", inputmode: "numeric", placeholder: "all nodes" });
  const runTimeout = h("input", { name: "run_timeout", id: "run_timeout", inputmode: "numeric", placeholder: "server default" });
  const concurrency = h("input", { name: "max_concurrency", id: "max_concurrency", placeholder: "all at once" });
  const errors = h("input", { name: "max_errors", id: "max_errors", placeholder: "no limit" });
  const capture = h("input", { type: "checkbox", name: "capture_output", id: "capture_output", checked: true });
  const submit = h("button", { type: "submit", id: "start-job" }, "Start job");

  async function resolveNodes() {
    if (byNodes.checked) return nodes.value.split(/[\s,]+/).filter(Boolean);
    const q = new URLSearchParams({ q: query.value.trim(), rows: "10000" });
    const body = await api("GET", `/organizations/${encodeURIComponent(app.session.org)}/search/node?${q}`);
    return body.rows.map((row) => row.name);
  }

  function count(input, name, percent) {
    const text = input.value.trim();
    if (!text) return undefined;
    if (/^\d+$/.test(text)) return Number(text);
    if (percent && /^\d+%$/.test(text)) return text;
    throw new Error(`${name}: a whole number${percent ? " or a percentage (N%)" : ""}`);
  }

  async function onSubmit(event) {
    event.preventDefault();
    notice("");
    submit.disabled = true;
    try {
      const request = { command: command.value, nodes: await resolveNodes() };
      if (!request.nodes.length) throw new Error(byNodes.checked ? "name at least one node" : "the search query matches no node");
      const extra = {
        quorum: count(quorum, "quorum", false),
        run_timeout: count(runTimeout, "run timeout", false),
        max_concurrency: count(concurrency, "max concurrency", true),
        max_errors: count(errors, "max errors", true),
      };
      for (const [key, value] of Object.entries(extra)) if (value !== undefined) request[key] = value;
      if (capture.checked) request.capture_output = true;
      const created = await api("POST", orgPath("jobs"), request);
      location.hash = `#/jobs/${created.id}`;
    } catch (err) {
      notice(`The job was not started: ${err.message}`);
    } finally {
      submit.disabled = false;
    }
  }

  main(
    h("h1", {}, "Start a job"),
    h(
      "form",
      { id: "start-form", class: "panel form", onsubmit: onSubmit },
      field("Command", command, "A job name of the nodes' whitelist."),
      commands,
      h(
        "fieldset",
        {},
        h("legend", {}, "Nodes"),
        h("label", { class: "choice" }, byNodes, " by name"),
        nodes,
        h("label", { class: "choice" }, byQuery, " by search query"),
        query,
      ),
      h(
        "div",
        { class: "row" },
        field("Quorum", quorum, "Nodes that must accept (default: all)."),
        field("Run timeout (s)", runTimeout, "Default: the server's (3600)."),
      ),
      h(
        "div",
        { class: "row" },
        field("Max concurrency", concurrency, "Rolling execution: N or N% at a time."),
        field("Max errors", errors, "Stop the rollout after more failures (N or N%)."),
      ),
      h("label", { class: "choice" }, capture, " Capture output (live)"),
      h("div", { class: "actions" }, submit),
    ),
  );
  nodes.addEventListener("focus", () => (byNodes.checked = true));
  query.addEventListener("focus", () => (byQuery.checked = true));
  // recent commands as suggestions (the whitelist is the nodes', not known to the server)
  api("GET", orgPath("jobs"))
    .then((jobs) => {
      const seen = new Set(["chef-client"]);
      for (const job of jobs) {
        if (seen.has(job.command)) continue;
        seen.add(job.command);
        commands.append(h("option", { value: job.command }));
      }
    })
    .catch(() => {});
  return { name: "start", stop() {} };
}

start();
