/** The control plane: the server a serving process starts, the client kfsctl uses. */
export { startControlServer, ControlServer, ControlServerOptions } from './server';
export { ControlClient } from './client';
