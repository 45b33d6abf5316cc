// Execute system command
const result = await symposium.process.execute('ls', ['-la', '/tmp'], {
  cwd: '/home/user',
  timeout: 10000
});

console.log('Exit code:', result.exitCode);
console.log('Output:', result.stdout);
if (result.stderr) {
  console.error('Errors:', result.stderr);
}

// Execute with environment variables
const envResult = await symposium.process.execute('echo', ['$HOME'], {
  env: { CUSTOM_VAR: 'value' }
});
