/**
 * The script inside the report page: it draws every chart the report describes
 * (src/report/charts.ts) with uPlot, resizes them with the page (and for print),
 * and records what it drew in `window.repoptReport` so a test in a real browser
 * can compare the plotted points with the logs. Plain ES2020 for any browser.
 */
export const CLIENT_JS = String.raw`
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('report-data').textContent);
  var state = { charts: {}, ready: false };
  window.repoptReport = state;
  var plots = [];

  function fmtNumber(v, digits) {
    if (v == null || !isFinite(v)) return '–';
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
    return v.toFixed(digits == null ? (a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3) : digits);
  }

  function categoryAxis(cats) {
    return {
      label: null,
      splits: function () { return cats.map(function (_, i) { return i; }); },
      values: function (u, splits) { return splits.map(function (i) { return cats[i] == null ? '' : cats[i]; }); },
      rotate: cats.length > 5 ? -35 : 0,
      // Rotated labels need room below the axis: about 0.6 of their length at 12px per character.
      size: cats.length > 5 ? Math.min(130, 18 + 0.6 * 6.5 * Math.max.apply(null, cats.map(function (c) { return String(c).length; }))) : 40,
      gap: 4,
    };
  }

  function build(spec, width) {
    var series = [{ label: spec.xLabel }];
    var uData;
    var opts = {
      width: width,
      height: spec.height || 240,
      scales: { x: { time: false } },
      legend: { show: !spec.sharedLegend, live: true },
      cursor: { drag: { x: true, y: false } },
      series: series,
      axes: [{ label: spec.xLabel, labelSize: 18 }, { label: spec.yLabel, labelSize: 18, size: 56, values: function (u, splits) { return splits.map(function (v) { return fmtNumber(v, spec.yDigits); }); } }],
    };
    if (spec.logY) opts.scales.y = { distr: 3 };
    if (spec.categories) {
      var n = spec.categories.length;
      opts.scales.x.range = function () { return [-0.5, n - 0.5]; };
      opts.axes[0] = Object.assign(categoryAxis(spec.categories), { label: spec.xLabel, labelSize: 18 });
      // Rotated labels run down to the right: room for the last one.
      if (n > 5) opts.padding = [12, 36, 0, 0];
      opts.series[0].value = function (u, i) { return i == null ? '' : spec.categories[i]; };
      var xs = spec.categories.map(function (_, i) { return i; });
      uData = [xs].concat(spec.series.map(function (s) { return s.y; }));
    } else {
      uData = uPlot.join(spec.series.map(function (s) { return [s.x, s.y]; }));
    }
    spec.series.forEach(function (s) {
      var few = s.y.length <= 40;
      var o = {
        label: s.label,
        stroke: s.color,
        width: s.width == null ? 1.6 : s.width,
        dash: s.dash || undefined,
        spanGaps: true,
        points: { show: s.points == null ? few : s.points, size: s.pointSize || 6, fill: s.color },
        value: function (u, v) { return fmtNumber(v, spec.yDigits); },
      };
      if (s.bars) {
        o.paths = uPlot.paths.bars({ size: [0.55, 90] });
        o.fill = s.color + 'cc';
        o.points = { show: false };
      }
      if (s.hidden) o.show = false;
      series.push(o);
    });
    if (spec.bands) opts.bands = spec.bands.map(function (b) { return { series: [b[0] + 1, b[1] + 1], fill: b[2] }; });
    return { opts: opts, data: uData };
  }

  function record(spec, u) {
    state.charts[spec.id] = {
      title: spec.title,
      x: u.data[0].length,
      canvas: !!u.root.querySelector('canvas'),
      series: spec.series.map(function (s, i) {
        var ys = u.data[i + 1];
        var xs = u.data[0];
        var pts = [];
        for (var j = 0; j < ys.length; j++) if (ys[j] != null) pts.push([xs[j], ys[j]]);
        return { label: s.label, run: s.run || null, role: s.role || null, points: pts.length, values: pts };
      }),
    };
  }

  data.charts.forEach(function (spec) {
    var el = document.getElementById(spec.id);
    if (!el) { console.error('report: no element for chart ' + spec.id); return; }
    var built = build(spec, Math.max(260, el.clientWidth));
    var u = new uPlot(built.opts, built.data, el);
    if (spec.xRange && spec.xRange[1] > spec.xRange[0]) u.setScale('x', { min: spec.xRange[0], max: spec.xRange[1] });
    spec.series.forEach(function (s, i) {
      if (s.legend === false) {
        var row = u.root.querySelectorAll('.u-legend .u-series')[i + 1];
        if (row) row.style.display = 'none';
      }
    });
    plots.push({ u: u, el: el });
    record(spec, u);
  });

  function resize() {
    plots.forEach(function (p) {
      var w = Math.max(260, p.el.clientWidth);
      if (Math.abs(w - p.u.width) > 1) p.u.setSize({ width: w, height: p.u.height });
    });
  }
  var pending = 0;
  window.addEventListener('resize', function () { clearTimeout(pending); pending = setTimeout(resize, 80); });
  window.addEventListener('beforeprint', resize);
  window.addEventListener('afterprint', resize);
  if (window.matchMedia) window.matchMedia('print').addEventListener('change', resize);
  state.ready = true;
})();
`;
