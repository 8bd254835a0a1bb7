import * as path from 'node:path';
import { assertOutputApart } from '../../io/fs';
import { formatLab, LAB_BASE, runLab } from '../../lab';
import { writeReport } from '../../report';
import { command, print, printReportWritten } from '../run';
import { jsonOption } from '../options';

export const labCommand = command({
  usage: 'lab',
  describe: 'Every LoRA/QLoRA/full arm on two tasks of the shipped model\'s world, over 3 seeds: task score, forgetting, intruders, merge error, cost',
  options: (a) =>
    a
      .option('quick', { type: 'boolean', default: false, describe: 'few steps and subsets of the eval text: minutes on a CPU' })
      .option('out', { type: 'string', default: 'lorakit-lab', describe: 'output folder: runs/, data/ and lab.json (an interrupted lab resumes in it)' })
      .option('json', jsonOption('print lab.json instead of the tables'))
      .option('report', { type: 'string', describe: 'also write the results as a self-contained HTML report (plots with 95% CIs) to this file' }),
  run: async (argv) => {
    // Checked before the runs: the report must not land on anything the lab reads or writes.
    if (argv.report !== undefined)
      assertOutputApart('lab', argv.report, {
        'the lab model': LAB_BASE, 'lab.json': path.join(argv.out, 'lab.json'), "the lab's runs": path.join(argv.out, 'runs'), "the lab's data": path.join(argv.out, 'data'),
      }, '--report');
    const report = await runLab({ out: argv.out, quick: argv.quick, log: (line) => process.stderr.write(`${line}\n`) });
    if (argv.json) print(JSON.stringify(report, null, 2));
    else {
      for (const line of formatLab(report)) print(line);
      print(`results in ${path.join(argv.out, 'lab.json')}`);
    }
    if (argv.report !== undefined) {
      const file = writeReport(argv.report, { title: `lorakit lab${report.quick ? ' --quick' : ''}`, lab: report });
      printReportWritten(file, argv.json);
    }
  },
});
