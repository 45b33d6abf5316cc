
// Driver (not part of the seed): a small bar chart for createDashboard, and the call.
function generateChartOperations(data) {
  const ops = [];
  const max = Math.max(...data.map((d) => d.value));
  const barWidth = 1000 / data.length;
  const colours = ['#1e88e5', '#43a047', '#fb8c00', '#8e24aa', '#e53935', '#00acc1', '#6d4c41'];
  ops.push({ type: 'fillText', text: 'Weekly sign-ups', x: 100, y: 80, style: '#222222', font: 'bold 36px sans-serif' });
  ops.push({ type: 'beginPath' }, { type: 'moveTo', x: 100, y: 700 }, { type: 'lineTo', x: 1100, y: 700 }, { type: 'stroke', style: '#555555', lineWidth: 2 });
  data.forEach((d, i) => {
    const height = (d.value / max) * 520;
    const x = 100 + i * barWidth + 15;
    ops.push({ type: 'fillRect', x, y: 700 - height, width: barWidth - 30, height, style: colours[i % colours.length] });
    ops.push({ type: 'fillText', text: d.label, x: x + 10, y: 740, style: '#333333', font: '24px sans-serif' });
    ops.push({ type: 'fillText', text: String(d.value), x: x + 10, y: 690 - height, style: '#333333', font: '22px sans-serif' });
  });
  return ops;
}

export default (input) => createDashboard(input ?? [
  { label: 'Mon', value: 12 }, { label: 'Tue', value: 19 }, { label: 'Wed', value: 7 },
  { label: 'Thu', value: 15 }, { label: 'Fri', value: 22 }, { label: 'Sat', value: 9 }, { label: 'Sun', value: 4 },
]);
