// Image processing (docs/image.md): draw a picture, save it, make a thumbnail, and draw the
// thumbnail into a second canvas.
const canvas = await symposium.canvas.createCanvas(400, 200);
await symposium.canvas.draw(canvas.canvasId, [
  { type: 'fillRect', x: 0, y: 0, width: 200, height: 200, style: '#e63946' },
  { type: 'fillRect', x: 200, y: 0, width: 200, height: 200, style: '#457b9d' },
]);
const png = await symposium.canvas.exportImage(canvas.canvasId, 'png');
await symposium.writeFile('pictures/banner.png', png.data);
console.log('banner:', (await symposium.image.info('pictures/banner.png')).data);
const thumb = await symposium.image.transform('pictures/banner.png',
  [{ type: 'resize', width: 100, height: 100, fit: 'cover' }, { type: 'rotate', degrees: 90 }],
  { output: 'pictures/thumb.png' });
console.log('thumbnail:', thumb.data);
const card = await symposium.canvas.createCanvas(120, 120);
await symposium.canvas.drawImage(card.canvasId, 'pictures/thumb.png', 10, 10);
const cardPng = await symposium.canvas.exportImage(card.canvasId, 'png');
await symposium.writeFile('pictures/card.png', cardPng.data);
export default () => thumb.data;
