/** One winston logger per process; library code logs through it, never console. */
import winston from 'winston';

export const log = winston.createLogger({
  level: process.env.KFS_LOG_LEVEL ?? 'warn',
  format: winston.format.combine(
    winston.format.timestamp(),
    winston.format.printf((i) => `${i.timestamp} ${i.level} ${i.message}`),
  ),
  transports: [new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug', 'verbose', 'silly'] })],
});

export function setLogLevel(level: string): void {
  log.level = level;
}

export function logToFile(file: string): void {
  log.clear();
  log.add(new winston.transports.File({ filename: file }));
}
