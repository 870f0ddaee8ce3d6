// The studio's API reference: each endpoint of /openapi.json with its purpose, parameters, a request
// example (with the curl line that sends it), a response example with its fields, and its errors.
// Plain JS, no dependencies (works offline, unlike a CDN-loaded Swagger UI).
"use strict";

let spec = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function resolve(schema) {
  // a {"$ref": "#/components/schemas/X"} to the schema it names
  while (schema && schema.$ref) schema = spec.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

function example(schema) {
  const s = resolve(schema);
  return s.examples ? s.examples[0] : undefined;
}

function pretty(value, indent = "") {
  // JSON with objects one key a line and arrays of numbers (strokes) kept on one line
  const flat = (v) => v === null || typeof v !== "object" || (Array.isArray(v) && v.every(flat));
  if (flat(value)) return JSON.stringify(value).replace(/,/g, ", ");
  const inner = indent + "  ";
  if (Array.isArray(value)) return `[\n${value.map((v) => inner + pretty(v, inner)).join(",\n")}\n${indent}]`;
  const rows = Object.entries(value).map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pretty(v, inner)}`);
  return `{\n${rows.join(",\n")}\n${indent}}`;
}

function constraints(schema) {
  const keys = ["type", "enum", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "default"];
  const parts = [];
  const s = schema.anyOf ? Object.assign({}, ...schema.anyOf.map(resolve), schema) : resolve(schema);
  for (const k of keys) if (s[k] !== undefined) parts.push(`${k} ${JSON.stringify(s[k])}`);
  return parts.join(", ");
}

function fields(schema) {
  // a table of an object schema's fields: name, constraints, description
  const s = resolve(schema);
  if (!s.properties) return null;
  const table = el("table");
  for (const [name, p] of Object.entries(s.properties)) {
    const tr = el("tr");
    tr.append(el("td", name), el("td", constraints(p), "muted"), el("td", p.description || resolve(p).description || ""));
    table.append(tr);
  }
  return table;
}

function endpoint(path, method, op) {
  const box = el("section");
  box.id = `${method}-${path}`.replace(/[^\w-]/g, "-");
  const h = el("h2");
  h.append(el("span", method.toUpperCase(), "method"), el("code", path));
  box.append(h);
  if (op.summary) box.append(el("p", op.summary, "purpose"));
  if (op.description) box.append(el("p", op.description));
  if (op.parameters && op.parameters.length) {
    box.append(el("h3", "Query parameters"));
    const table = el("table");
    for (const p of op.parameters) {
      const tr = el("tr");
      tr.append(el("td", p.name), el("td", constraints(p.schema || {}), "muted"), el("td", p.description || ""));
      table.append(tr);
    }
    box.append(table);
  }
  const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  const origin = window.location.origin;
  if (body) {
    const ex = example(body.schema);
    box.append(el("h3", "Request"));
    if (ex !== undefined) {
      box.append(el("pre", pretty(ex), "request-example"));
      box.append(el("pre", `curl -s ${origin}${path} -H 'content-type: application/json' -d '${JSON.stringify(ex)}'`));
    }
    const t = fields(body.schema);
    if (t) box.append(t);
  } else if (method === "get") {
    box.append(el("h3", "Request"), el("pre", `curl -s '${origin}${path}'`));
  }
  const ok = op.responses && op.responses["200"];
  const okSchema = ok && ok.content && ok.content["application/json"] && ok.content["application/json"].schema;
  if (okSchema) {
    box.append(el("h3", "Response (200)"));
    const ex = example(okSchema);
    if (ex !== undefined) box.append(el("pre", pretty(ex), "response-example"));
    const t = fields(okSchema);
    if (t) box.append(t);
  }
  const errors = Object.entries(op.responses || {}).filter(([code]) => code !== "200");
  if (errors.length) {
    box.append(el("h3", "Errors ({\"status\", \"code\", \"detail\"})"));
    const table = el("table");
    for (const [code, r] of errors) {
      const tr = el("tr");
      tr.append(el("td", code), el("td", r.description || ""));
      table.append(tr);
    }
    box.append(table);
  }
  return box;
}

async function main() {
  const target = document.getElementById("endpoints");
  try {
    const res = await fetch("/openapi.json");
    spec = await res.json();
    document.getElementById("title").textContent = `${spec.info.title} API (version ${spec.info.version})`;
    document.getElementById("description").textContent = spec.info.description || "";
    target.replaceChildren();
    const toc = document.getElementById("toc");
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const section = endpoint(path, method, op);
        target.append(section);
        const a = el("a", `${method.toUpperCase()} ${path}`);
        a.href = `#${section.id}`;
        toc.append(a);
      }
    }
    document.body.dataset.endpoints = String(target.children.length);
  } catch (err) {
    target.textContent = `could not read /openapi.json: ${err.message}`;
  }
}

main();
