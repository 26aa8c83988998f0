/**
 * A page in Debian's Chromium (puppeteer-core; scripts/setup.sh --test installs the browser), watched:
 * console errors and warnings, page errors and failed requests are collected in `problems`, every
 * requested URL in `requests`. The report tests assert both are as they must be.
 */
import puppeteer, { type Browser, type Page } from 'puppeteer-core';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

export interface WatchedPage {
  browser: Browser;
  page: Page;
  problems: string[];
  requests: string[];
}

export async function openWatchedPage(): Promise<WatchedPage> {
  const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu'] });
  const page = await browser.newPage();
  const problems: string[] = [];
  const requests: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warn') problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${(e as Error).message}`));
  page.on('requestfailed', (r) => problems.push(`failed request: ${r.url()}`));
  page.on('request', (r) => requests.push(r.url()));
  return { browser, page, problems, requests };
}
