// report.html's script: reads the page's data (reviewing.Review.as_json) and shows it on demand.
// Every text from the data goes into the document as text (textContent, option.text), never as
// markup: names from captures and snapshots are data.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("review-data").textContent);
  var details = document.getElementById("details");
  var chosenNamespace = "";

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function append(parent) {
    for (var i = 1; i < arguments.length; i++) parent.appendChild(arguments[i]);
    return parent;
  }
  function link(text, action) {
    var button = el("button", "link", text);
    button.type = "button";
    button.addEventListener("click", action);
    return button;
  }
  function table(headings, rows) {
    var t = el("table");
    var head = append(t, el("thead")).appendChild(el("tr"));
    headings.forEach(function (h) { head.appendChild(el("th", "", h)); });
    var body = t.appendChild(el("tbody"));
    rows.forEach(function (cells) {
      var tr = body.appendChild(el("tr"));
      cells.forEach(function (cell) {
        var td = tr.appendChild(el("td"));
        if (cell instanceof Node) td.appendChild(cell); else td.textContent = String(cell);
      });
    });
    return t;
  }
  function number(n) { return Number(n).toLocaleString("en-US"); }
  function plural(n, word) { return number(n) + " " + word + (n === 1 ? "" : "s"); }

  function workloadNamespace(id) {
    var workload = data.workloads[id];
    return workload ? workload.namespace : null;
  }
  function edgeNamespaces(edge) {
    return [workloadNamespace(edge.client), workloadNamespace(edge.server)].filter(function (n) { return n !== null; });
  }
  function edgesOf(id) {
    var found = [];
    data.edges.forEach(function (edge, index) {
      if (edge.client === id || edge.server === id) found.push(index);
    });
    return found;
  }
  // A workload's connections with single addresses past the first ones (reviewing.FoldedEdges):
  // summed up, by direction.
  var folded = data.folded || [];
  function foldedOf(id) {
    var found = [];
    folded.forEach(function (item, index) { if (item.subject === id) found.push(index); });
    return found;
  }
  function foldedEnds(item) {
    var others = number(item.edges) + " more address" + (item.edges === 1 ? "" : "es");
    return item.direction === "egress" ? [item.subject_label, others] : [others, item.subject_label];
  }
  // -- the details panel ---------------------------------------------------------------------
  function show(title, parts) {
    details.textContent = "";
    details.appendChild(el("h2", "", title));
    parts.forEach(function (part) { details.appendChild(part); });
    details.scrollTop = 0;
  }

  function fileLines(file, first, last) {
    var text = data.files[file];
    var pre = el("pre", "policy");
    if (text === undefined) return el("p", "note", "(" + file + " is not among the generated files)");
    var lines = text.split("\n");
    if (lines.length && lines[lines.length - 1] === "") lines.pop();
    var from = first ? first : 1, to = last ? last : lines.length;
    for (var i = from; i <= to; i++) {
      var line = el("span", first ? "hit" : "");
      append(line, el("span", "number", String(i).padStart(4, " ") + "  "), document.createTextNode(lines[i - 1] + "\n"));
      pre.appendChild(line);
    }
    pre.setAttribute("data-file", file);
    return pre;
  }

  function showWorkload(id) {
    var workload = data.workloads[id];
    if (!workload) { showMembers(id, [id]); return; }
    var parts = [
      el("p", "", workload.kind + " in namespace " + workload.namespace + ": " +
        (workload.in_scope ? "captured, it gets a policy." : "seen only as a peer of a captured workload: no policy of its own.")),
    ];
    var unobserved = el("section", "unobserved");
    append(unobserved, el("h3", "", "Allowed but never observed"));
    if (workload.unobserved.length) {
      unobserved.appendChild(el("p", "note", "What the policies allow for it (both ends' policies evaluated, as verify does) that no capture saw:"));
      unobserved.appendChild(table(["direction", "peer", "ports never observed", "observed"], workload.unobserved.map(function (item) {
        var arrow = item.direction === "egress" ? "it may connect to" : "may connect to it";
        var peer = data.workloads[item.peer] ? link(item.peer, function () { showWorkload(item.peer); }) : item.peer;
        return [arrow, peer, item.ports, item.observed || "nothing"];
      })));
    } else if (data.unchecked) {
      unobserved.appendChild(el("p", "none", data.unchecked));
    } else {
      unobserved.appendChild(el("p", "none", workload.in_scope ? "Nothing: every connection its policies allow was observed." : "Not checked: only captured workloads are (as verify does)."));
    }
    parts.push(unobserved);
    var connections = edgesOf(id), summed = foldedOf(id);
    if (connections.length || summed.length) {
      parts.push(el("h3", "", "Connections"));
      var list = el("ul");
      connections.forEach(function (index) {
        var edge = data.edges[index];
        list.appendChild(el("li")).appendChild(link(edge.client_label + " → " + edge.server_label, function () { showEdges([index]); }));
      });
      summed.forEach(function (index) {
        list.appendChild(el("li")).appendChild(link(foldedEnds(folded[index]).join(" → "), function () { showEdges([], [index]); }));
      });
      parts.push(list);
    }
    if (workload.files.length) {
      workload.files.forEach(function (file) {
        parts.push(el("h3", "", "Policy: " + file));
        parts.push(fileLines(file));
      });
    } else {
      parts.push(el("p", "none", "No generated policy selects it."));
    }
    show(id, parts);
    markWorkload(id);
  }

  function showMembers(title, members) {
    var parts = [];
    var list = el("ul");
    members.forEach(function (member) {
      var item = list.appendChild(el("li"));
      if (data.workloads[member]) item.appendChild(link(member, function () { showWorkload(member); }));
      else item.textContent = member;
    });
    parts.push(el("p", "", plural(members.length, "member") + ":"), list);
    var indices = [];
    data.edges.forEach(function (edge, index) {
      if (members.indexOf(edge.client) >= 0 || members.indexOf(edge.server) >= 0) indices.push(index);
    });
    if (indices.length) {
      parts.push(el("h3", "", "Connections"));
      var connections = el("ul");
      indices.forEach(function (index) {
        var edge = data.edges[index];
        connections.appendChild(el("li")).appendChild(link(edge.client_label + " → " + edge.server_label, function () { showEdges([index]); }));
      });
      parts.push(connections);
    }
    show(title, parts);
  }

  function portSection(port) {
    var section = el("section", "port");
    section.appendChild(el("h3", "", port.port));
    var facts = plural(port.flows, "flow") + ", " + plural(port.packets, "packet") + ", " + plural(port.bytes, "byte") +
      ", " + port.first_seen + " to " + port.last_seen + "; direction: " + port.evidence.join(", ");
    if (port.services.length) facts += "; through Service " + port.services.join(", ");
    section.appendChild(el("p", "", facts));
    section.appendChild(el("p", "", port.rules.length ? "Allowed by:" : "No rule of the generated policies is needed for it:"));
    port.rules.forEach(function (rule) {
      var where = rule.direction + " of " + rule.subject + ": policy " + rule.policy + ", " + rule.file + " lines " + rule.first + "–" + rule.last;
      var block = el("div", "rule");
      block.setAttribute("data-direction", rule.direction);
      append(block, el("p", "", where), fileLines(rule.file, rule.first, rule.last));
      section.appendChild(block);
    });
    if (port.notes.length) {
      var notes = el("ul", "notes");
      port.notes.forEach(function (note) { notes.appendChild(el("li", "note", note)); });
      section.appendChild(notes);
    }
    var rows = port.listed.map(function (flow) {
      return [flow.client, flow.server + (flow.service ? " (" + flow.service + ")" : ""), flow.first_seen, flow.last_seen, number(flow.packets), number(flow.bytes), flow.evidence];
    });
    section.appendChild(table(["client", "server", "first seen", "last seen", "packets", "bytes", "direction"], rows));
    if (port.unlisted) section.appendChild(el("p", "note", "… and " + plural(port.unlisted, "more flow") + " (the capture files have them)."));
    return section;
  }

  function foldedSection(item) {
    var block = el("section", "edge folded");
    append(block,
      el("h3", "", foldedEnds(item).join(" → ")),
      el("p", "", plural(item.flows, "flow") + ", " + plural(item.packets, "packet") + ", " + plural(item.bytes, "byte") + " on " + item.ports + "."),
      el("p", "note", "Summed up here: report.md lists these addresses by port, verify --json one by one."));
    return block;
  }

  function showEdges(indices, summed) {
    summed = summed || [];
    var parts = [];
    indices.forEach(function (index) {
      var edge = data.edges[index];
      var heading = el("h3", "");
      append(heading,
        data.workloads[edge.client] ? link(edge.client_label, function () { showWorkload(edge.client); }) : document.createTextNode(edge.client_label),
        document.createTextNode(" → "),
        data.workloads[edge.server] ? link(edge.server_label, function () { showWorkload(edge.server); }) : document.createTextNode(edge.server_label));
      var block = el("section", "edge");
      block.appendChild(heading);
      edge.ports.forEach(function (port) { block.appendChild(portSection(port)); });
      parts.push(block);
    });
    summed.forEach(function (index) { parts.push(foldedSection(folded[index])); });
    var count = indices.length + summed.reduce(function (sum, index) { return sum + folded[index].edges; }, 0);
    show(count === 1 ? "Connection" : plural(count, "connection"), parts);
  }

  // -- the pictures --------------------------------------------------------------------------
  // views[0] is graph.svg; the others each draw one namespace with its peers (data.views).
  var views = (data.views || []).map(function (view, index) {
    var holder = document.querySelector('#picture > .view[data-view="' + index + '"]');
    return { namespace: view.namespace, shapes: view.shapes, holder: holder, svg: holder ? holder.querySelector("svg") : null, zoom: null };
  });
  var active = views.length ? views[0] : null;
  function shapesOf(view) { return view ? view.shapes : { nodes: {}, edges: {}, groups: {} }; }
  function shapeIn(view, target) {
    var g = target.closest ? target.closest("g.node, g.edge, g.cluster") : null;
    var found = shapesOf(view);
    return g && (found.nodes[g.id] || found.edges[g.id] || found.groups[g.id]) ? g : null;
  }
  function mark(ids) {
    if (!active || !active.svg) return;
    active.svg.querySelectorAll(".selected").forEach(function (g) { g.classList.remove("selected"); });
    ids.forEach(function (id) {
      var g = active.svg.querySelector('[id="' + CSS.escape(id) + '"]');
      if (g) g.classList.add("selected");
    });
  }
  function markWorkload(id) {
    var nodes = shapesOf(active).nodes;
    mark(Object.keys(nodes).filter(function (shapeId) { return nodes[shapeId].members.indexOf(id) >= 0; }));
  }
  views.forEach(function (view) {
    if (!view.svg) return;
    view.svg.addEventListener("click", function (event) {
      var g = shapeIn(view, event.target);
      if (!g) return;
      var node = view.shapes.nodes[g.id], edge = view.shapes.edges[g.id], group = view.shapes.groups[g.id];
      if (edge) { showEdges(edge.edges, edge.folded); mark([g.id]); }
      else if (node && node.members.length === 1 && data.workloads[node.members[0]]) showWorkload(node.members[0]);
      else if (node) { showMembers(node.title, node.members); mark([g.id]); }
      else if (group && group.namespace !== null && group.namespace !== chosenNamespace) choose(group.namespace);
    });
  });
  function activate(view) {
    views.forEach(function (other) { if (other.holder) other.holder.hidden = other !== view; });
    active = view;
    if (view && view.svg && !view.zoom && typeof svgPanZoom === "function") {
      view.zoom = svgPanZoom(view.svg, { controlIconsEnabled: true, fit: true, center: true, minZoom: 0.1, maxZoom: 40, dblClickZoomEnabled: false });
    }
  }
  activate(active);

  // -- the namespace filter ------------------------------------------------------------------
  var select = document.getElementById("namespace");
  data.namespaces.forEach(function (namespace) {
    var option = el("option", "", namespace);
    option.value = namespace;
    select.appendChild(option);
  });
  function keeps(namespaces) { return !chosenNamespace || namespaces.indexOf(chosenNamespace) >= 0; }
  function choose(namespace) {
    chosenNamespace = namespace;
    select.value = namespace;
    // A namespace with a picture of its own shows it; otherwise graph.svg, the rest faded.
    var own = views.filter(function (view) { return namespace && view.namespace === namespace; })[0];
    activate(own || views[0] || null);
    if (!own && active && active.svg) {
      ["nodes", "edges", "groups"].forEach(function (kind) {
        var found = active.shapes[kind];
        Object.keys(found).forEach(function (id) {
          var g = active.svg.querySelector('[id="' + CSS.escape(id) + '"]');
          if (g) g.classList.toggle("faded", !keeps(found[id].namespaces));
        });
      });
      focusNamespace(namespace);
    }
    workloadRows.forEach(function (row) { row.tr.classList.toggle("hidden", !keeps([row.namespace])); });
    connectionRows.forEach(function (row) { row.tr.classList.toggle("hidden", !keeps(row.namespaces)); });
  }
  function focusNamespace(namespace) {
    var zoom = active ? active.zoom : null;
    if (!zoom) return;
    zoom.resize(); zoom.fit(); zoom.center();
    var box = null, groups = active.shapes.groups;
    Object.keys(groups).forEach(function (id) {
      if (groups[id].namespace === namespace) box = active.svg.querySelector('[id="' + CSS.escape(id) + '"]');
    });
    if (!namespace || !box) return;
    var frame = active.svg.getBoundingClientRect(), area = box.getBoundingClientRect();
    zoom.zoomBy(Math.max(1, Math.min(frame.width / area.width, frame.height / area.height) * 0.9));
    area = box.getBoundingClientRect();
    zoom.panBy({
      x: frame.left + frame.width / 2 - (area.left + area.width / 2),
      y: frame.top + frame.height / 2 - (area.top + area.height / 2),
    });
  }
  select.addEventListener("change", function () { choose(select.value); });

  // -- the lists -----------------------------------------------------------------------------
  var workloadRows = [], connectionRows = [];
  var workloadBody = document.querySelector("#workloads tbody");
  Object.keys(data.workloads).sort().forEach(function (id) {
    var workload = data.workloads[id];
    var tr = workloadBody.appendChild(el("tr"));
    [workload.namespace, workload.name, workload.kind, workload.files.join(", ") || (workload.in_scope ? "none" : "none (a peer)"),
      workload.in_scope && !data.unchecked ? String(workload.unobserved.length) : "not checked"].forEach(function (text) { tr.appendChild(el("td", "", text)); });
    tr.setAttribute("data-workload", id);
    tr.addEventListener("click", function () { showWorkload(id); });
    workloadRows.push({ tr: tr, namespace: workload.namespace });
  });
  var connectionBody = document.querySelector("#connections tbody");
  data.edges.forEach(function (edge, index) {
    var tr = connectionBody.appendChild(el("tr"));
    var flows = edge.ports.reduce(function (sum, port) { return sum + port.flows; }, 0);
    [edge.client_label, edge.server_label, edge.ports.map(function (port) { return port.port; }).join(", "), number(flows)]
      .forEach(function (text) { tr.appendChild(el("td", "", text)); });
    tr.setAttribute("data-edge", String(index));
    tr.addEventListener("click", function () { showEdges([index]); });
    connectionRows.push({ tr: tr, namespaces: edgeNamespaces(edge) });
  });
  folded.forEach(function (item, index) {
    var tr = connectionBody.appendChild(el("tr"));
    foldedEnds(item).concat([item.ports, number(item.flows)]).forEach(function (text) { tr.appendChild(el("td", "", text)); });
    tr.setAttribute("data-folded", String(index));
    tr.addEventListener("click", function () { showEdges([], [index]); });
    var namespace = workloadNamespace(item.subject);
    connectionRows.push({ tr: tr, namespaces: namespace === null ? [] : [namespace] });
  });
  var fileList = document.getElementById("files");
  Object.keys(data.files).sort().forEach(function (file) {
    fileList.appendChild(el("li")).appendChild(link(file, function () { show(file, [fileLines(file)]); }));
  });
})();
