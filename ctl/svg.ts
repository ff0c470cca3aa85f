/**
 * The block map as SVG: one square per cell of N blocks, colored by the class most of its
 * blocks have; file data goes from green (contiguous) through yellow to red (score 100) by
 * the most fragmented file it holds data of. Each cell carries its exact per-class block counts as data-*
 * attributes and a <title> tooltip, so the picture can be checked against the numbers; a
 * legend gives the totals.
 */
import type { BlockMap } from '../src/control/protocol';

const COLORS: Record<string, string> = {
  free: '#f4f4f4',
  superblock: '#1f3b73',
  bitmap: '#5b2a86',
  'inode-table': '#3f6fb5',
  journal: '#8c564b',
  'extent-tree': '#e377c2',
  directory: '#17becf',
  xattr: '#bcbd22',
  file: '#2ca02c',
  unowned: '#7f7f7f',
};

const LABELS: Record<string, string> = {
  free: 'free',
  superblock: 'superblock, descriptors, reserved GDT',
  bitmap: 'block and inode bitmaps',
  'inode-table': 'inode tables',
  journal: 'journal',
  'extent-tree': 'extent-tree blocks',
  directory: 'directory blocks',
  xattr: 'xattr blocks',
  file: 'file data (green contiguous → red fragmented)',
  unowned: 'in use, no owner found',
};

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Score 0..100 → green, yellow, red. */
export function scoreColor(score: number): string {
  const t = Math.max(0, Math.min(1, score / 100));
  const mix = (a: number[], b: number[], f: number) => a.map((x, i) => Math.round(x + (b[i] - x) * f));
  const green = [44, 160, 44];
  const yellow = [230, 200, 30];
  const red = [214, 39, 40];
  const c = t < 0.5 ? mix(green, yellow, t * 2) : mix(yellow, red, (t - 0.5) * 2);
  return `#${c.map((x) => x.toString(16).padStart(2, '0')).join('')}`;
}

export function renderBlockMapSvg(m: BlockMap, title: string): string {
  const n = m.counts.length;
  const cols = Math.min(n, Math.max(16, Math.ceil(Math.sqrt(n * 2))));
  const rows = Math.ceil(n / cols);
  const cell = Math.max(4, Math.min(16, Math.floor(960 / cols)));
  const pad = 10;
  const header = 44;
  const gridW = cols * cell;
  const legendTop = header + rows * cell + 16;
  const legendRows = m.classes.length + 1;
  const width = Math.max(gridW + 2 * pad, 520);
  const height = legendTop + legendRows * 18 + pad;
  const out: string[] = [];
  out.push('<?xml version="1.0" encoding="UTF-8"?>');
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" data-blocks="${m.blocks}" data-block-size="${m.blockSize}" data-blocks-per-cell="${m.blocksPerCell}">`);
  out.push(`<style>text{font-family:sans-serif;font-size:12px;fill:#222}.cell{stroke:#fff;stroke-width:0.5}</style>`);
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="${pad}" y="18" font-weight="bold">${esc(title)}</text>`);
  out.push(`<text x="${pad}" y="34">${m.blocks} blocks of ${m.blockSize} bytes; one cell = ${m.blocksPerCell} block${m.blocksPerCell > 1 ? 's' : ''}; ${n} cells</text>`);
  out.push(`<g id="cells" transform="translate(${pad},${header})">`);
  for (let i = 0; i < n; i++) {
    const row = m.counts[i];
    let best = 0;
    for (let k = 1; k < row.length; k++) if (row[k] > row[best]) best = k;
    const cls = m.classes[best];
    const color = cls === 'file' && m.fileScore[i] >= 0 ? scoreColor(m.fileScore[i]) : COLORS[cls];
    const first = i * m.blocksPerCell;
    const last = Math.min(m.blocks, first + m.blocksPerCell) - 1;
    const data = m.classes.map((c, k) => (row[k] ? ` data-${c}="${row[k]}"` : '')).join('');
    const parts = m.classes.map((c, k) => (row[k] ? `${c} ${row[k]}` : '')).filter(Boolean).join(', ');
    const frag = m.fileScore[i] >= 0 ? `; file fragmentation ${m.fileScore[i]}` : '';
    const x = (i % cols) * cell;
    const y = Math.floor(i / cols) * cell;
    out.push(`<rect class="cell ${cls}" x="${x}" y="${y}" width="${cell}" height="${cell}" fill="${color}"${data}><title>blocks ${first}-${last}: ${parts}${frag}</title></rect>`);
  }
  out.push('</g>');
  out.push(`<g id="legend" transform="translate(${pad},${legendTop})">`);
  m.classes.forEach((c, k) => {
    const y = k * 18;
    out.push(`<rect x="0" y="${y}" width="12" height="12" fill="${COLORS[c]}" stroke="#999" stroke-width="0.5"/>`);
    out.push(`<text x="18" y="${y + 10}" class="legend" data-class="${c}" data-total="${m.totals[c] ?? 0}">${esc(LABELS[c] ?? c)}: ${m.totals[c] ?? 0} blocks</text>`);
  });
  const y = m.classes.length * 18;
  [0, 25, 50, 75, 100].forEach((s, k) => out.push(`<rect x="${k * 14}" y="${y}" width="12" height="12" fill="${scoreColor(s)}"/>`));
  out.push(`<text x="${5 * 14 + 4}" y="${y + 10}">file fragmentation score 0 → 100 (e4defrag scale)</text>`);
  out.push('</g>');
  out.push('</svg>');
  return out.join('\n') + '\n';
}
